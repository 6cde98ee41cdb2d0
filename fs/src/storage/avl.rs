//! The AVL tree embedded in btree blocks: nodes are the first 8 bytes of
//! each item (`parent`, `left`, `right` le16 offsets, `height` u8, pad),
//! offsets are relative to byte 32 of the block (the root field), 0 = none.
//!
//! Used only by the btree block code. Readers walk links and never trust
//! heights (the reference mkfs writes wrong ones); writers recompute heights
//! from children on every path they touch, exactly as the kernel does, so
//! the tree returns to balance as it is modified.

use crate::format::btree::AVL_BASE;
use crate::format::le::*;
use core::cmp::Ordering;

const PARENT: usize = 0;
const LEFT: usize = 2;
const RIGHT: usize = 4;
const HEIGHT: usize = 6;
const PAD: usize = 7;

#[inline]
fn at(n: u16, f: usize) -> usize {
    AVL_BASE + n as usize + f
}

#[inline]
pub fn root(b: &[u8]) -> u16 {
    get_u16(b, AVL_BASE)
}
#[inline]
fn set_root(b: &mut [u8], n: u16) {
    put_u16(b, AVL_BASE, n)
}
#[inline]
pub fn parent(b: &[u8], n: u16) -> u16 {
    get_u16(b, at(n, PARENT))
}
#[inline]
pub fn left(b: &[u8], n: u16) -> u16 {
    get_u16(b, at(n, LEFT))
}
#[inline]
pub fn right(b: &[u8], n: u16) -> u16 {
    get_u16(b, at(n, RIGHT))
}
#[inline]
pub fn height(b: &[u8], n: u16) -> u8 {
    if n == 0 {
        0
    } else {
        b[at(n, HEIGHT)]
    }
}
#[inline]
fn set_parent(b: &mut [u8], n: u16, p: u16) {
    put_u16(b, at(n, PARENT), p)
}
#[inline]
fn set_left(b: &mut [u8], n: u16, c: u16) {
    put_u16(b, at(n, LEFT), c)
}
#[inline]
fn set_right(b: &mut [u8], n: u16, c: u16) {
    put_u16(b, at(n, RIGHT), c)
}
#[inline]
fn set_height_raw(b: &mut [u8], n: u16, h: u8) {
    b[at(n, HEIGHT)] = h
}

fn fix_height(b: &mut [u8], n: u16) {
    // heights come from the block: a damaged one must not overflow
    let h = height(b, left(b, n))
        .max(height(b, right(b, n)))
        .saturating_add(1);
    set_height_raw(b, n, h);
}

fn balance(b: &[u8], n: u16) -> i32 {
    height(b, right(b, n)) as i32 - height(b, left(b, n)) as i32
}

/// Leftmost node (0 if empty).
pub fn first(b: &[u8]) -> u16 {
    let mut n = root(b);
    while n != 0 && left(b, n) != 0 {
        n = left(b, n);
    }
    n
}

/// Rightmost node (0 if empty).
pub fn last(b: &[u8]) -> u16 {
    let mut n = root(b);
    while n != 0 && right(b, n) != 0 {
        n = right(b, n);
    }
    n
}

/// In-order successor (0 at the end).
pub fn next(b: &[u8], mut n: u16) -> u16 {
    if right(b, n) != 0 {
        n = right(b, n);
        while left(b, n) != 0 {
            n = left(b, n);
        }
        return n;
    }
    loop {
        let p = parent(b, n);
        if p == 0 || left(b, p) == n {
            return p;
        }
        n = p;
    }
}

/// In-order predecessor (0 at the start).
pub fn prev(b: &[u8], mut n: u16) -> u16 {
    if left(b, n) != 0 {
        n = left(b, n);
        while right(b, n) != 0 {
            n = right(b, n);
        }
        return n;
    }
    loop {
        let p = parent(b, n);
        if p == 0 || right(b, p) == n {
            return p;
        }
        n = p;
    }
}

/// The result of a descent: the node found (if `cmp` is Equal), else the
/// last node visited (the parent a new node would hang from) and the side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Search {
    pub node: u16,
    pub cmp: Ordering,
    /// Smallest visited node greater than the target (0 if none).
    pub next: u16,
    /// Greatest visited node less than the target (0 if none).
    pub prev: u16,
}

/// Descend comparing the target with nodes (`cmp(node)` = target vs node).
pub fn search(b: &[u8], mut cmp: impl FnMut(u16) -> Ordering) -> Search {
    let mut s = Search {
        node: 0,
        cmp: Ordering::Less,
        next: 0,
        prev: 0,
    };
    let mut n = root(b);
    while n != 0 {
        s.node = n;
        s.cmp = cmp(n);
        match s.cmp {
            Ordering::Less => {
                s.next = n;
                n = left(b, n);
            }
            Ordering::Greater => {
                s.prev = n;
                n = right(b, n);
            }
            Ordering::Equal => return s,
        }
    }
    s
}

fn replace_child(b: &mut [u8], p: u16, old: u16, new: u16) {
    if p == 0 {
        set_root(b, new);
    } else if left(b, p) == old {
        set_left(b, p, new);
    } else {
        debug_assert_eq!(right(b, p), old);
        set_right(b, p, new);
    }
}

fn rotate_right(b: &mut [u8], d: u16) {
    let gp = parent(b, d);
    let l = left(b, d);
    let c = right(b, l);
    replace_child(b, gp, d, l);
    set_parent(b, l, gp);
    set_right(b, l, d);
    set_parent(b, d, l);
    set_left(b, d, c);
    if c != 0 {
        set_parent(b, c, d);
    }
    fix_height(b, d);
    fix_height(b, l);
}

fn rotate_left(b: &mut [u8], d: u16) {
    let gp = parent(b, d);
    let r = right(b, d);
    let c = left(b, r);
    replace_child(b, gp, d, r);
    set_parent(b, r, gp);
    set_left(b, r, d);
    set_parent(b, d, r);
    set_right(b, d, c);
    if c != 0 {
        set_parent(b, c, d);
    }
    fix_height(b, d);
    fix_height(b, r);
}

/// Rebalance `n` if needed; returns the root of its (new) subtree.
fn rebalance_node(b: &mut [u8], n: u16) -> u16 {
    fix_height(b, n);
    let bal = balance(b, n);
    if bal > 1 {
        let r = right(b, n);
        if balance(b, r) < 0 {
            rotate_right(b, r);
        }
        rotate_left(b, n);
        parent(b, n)
    } else if bal < -1 {
        let l = left(b, n);
        if balance(b, l) > 0 {
            rotate_left(b, l);
        }
        rotate_right(b, n);
        parent(b, n)
    } else {
        n
    }
}

fn rebalance_up(b: &mut [u8], mut n: u16) {
    while n != 0 {
        let top = rebalance_node(b, n);
        n = parent(b, top);
    }
}

/// Link `node` below `par` on the side given by `cmp` (node vs par), or as
/// the root when `par` is 0, then rebalance.
pub fn insert(b: &mut [u8], par: u16, node: u16, cmp: Ordering) {
    set_parent(b, node, par);
    set_left(b, node, 0);
    set_right(b, node, 0);
    set_height_raw(b, node, 1);
    b[at(node, PAD)] = 0;
    if par == 0 {
        set_root(b, node);
        return;
    }
    match cmp {
        Ordering::Less => set_left(b, par, node),
        Ordering::Greater => set_right(b, par, node),
        Ordering::Equal => panic!("avl insert of a duplicate"),
    }
    rebalance_up(b, par);
}

/// Unlink `node` and rebalance.
pub fn delete(b: &mut [u8], node: u16) {
    if left(b, node) != 0 && right(b, node) != 0 {
        // trade places with the successor so `node` has at most one child
        let s = {
            let mut s = right(b, node);
            while left(b, s) != 0 {
                s = left(b, s);
            }
            s
        };
        let (np, nl, nr, nh) = (
            parent(b, node),
            left(b, node),
            right(b, node),
            b[at(node, HEIGHT)],
        );
        let (sp, sr, sh) = (parent(b, s), right(b, s), b[at(s, HEIGHT)]);
        replace_child(b, np, node, s);
        set_parent(b, s, np);
        set_left(b, s, nl);
        set_parent(b, nl, s);
        set_height_raw(b, s, nh);
        if sp == node {
            set_right(b, s, node);
            set_parent(b, node, s);
        } else {
            set_right(b, s, nr);
            set_parent(b, nr, s);
            set_left(b, sp, node);
            set_parent(b, node, sp);
        }
        set_left(b, node, 0);
        set_right(b, node, sr);
        if sr != 0 {
            set_parent(b, sr, node);
        }
        set_height_raw(b, node, sh);
    }
    let child = if left(b, node) != 0 {
        left(b, node)
    } else {
        right(b, node)
    };
    let p = parent(b, node);
    replace_child(b, p, node, child);
    if child != 0 {
        set_parent(b, child, p);
    }
    set_parent(b, node, 0);
    set_left(b, node, 0);
    set_right(b, node, 0);
    rebalance_up(b, p);
}

/// The node bytes at `from` were copied to `to`: point its neighbours at
/// the new offset.
pub fn relocate(b: &mut [u8], to: u16, from: u16) {
    let p = parent(b, to);
    replace_child(b, p, from, to);
    let l = left(b, to);
    if l != 0 {
        set_parent(b, l, to);
    }
    let r = right(b, to);
    if r != 0 {
        set_parent(b, r, to);
    }
}

/// Build a perfectly balanced tree over `nodes` (already in key order),
/// with correct heights. Returns the root.
pub fn build_sorted(b: &mut [u8], nodes: &[u16]) -> u16 {
    fn rec(b: &mut [u8], nodes: &[u16], par: u16) -> (u16, u8) {
        if nodes.is_empty() {
            return (0, 0);
        }
        let mid = nodes.len() / 2;
        let n = nodes[mid];
        let (l, lh) = rec(b, &nodes[..mid], n);
        let (r, rh) = rec(b, &nodes[mid + 1..], n);
        set_parent(b, n, par);
        set_left(b, n, l);
        set_right(b, n, r);
        let h = 1 + lh.max(rh);
        set_height_raw(b, n, h);
        b[at(n, PAD)] = 0;
        (n, h)
    }
    let (r, _) = rec(b, nodes, 0);
    set_root(b, r);
    r
}

/// Walk the tree checking links (bounded by `max_nodes`): returns the nodes
/// in order, or a reason. `valid(n)` says whether an offset can be a node.
pub fn walk_checked(
    b: &[u8],
    max_nodes: usize,
    valid: impl Fn(u16) -> bool,
) -> Result<alloc::vec::Vec<u16>, &'static str> {
    let mut out = alloc::vec::Vec::with_capacity(max_nodes);
    let r = root(b);
    if r == 0 {
        return Ok(out);
    }
    if !valid(r) {
        return Err("avl root offset invalid");
    }
    if parent(b, r) != 0 {
        return Err("avl root has a parent");
    }
    // iterative in-order walk with an explicit stack bounded by max_nodes
    let mut stack: alloc::vec::Vec<u16> = alloc::vec::Vec::new();
    let mut n = r;
    loop {
        while n != 0 {
            if stack.len() > max_nodes {
                return Err("avl tree deeper than its item count");
            }
            stack.push(n);
            let l = left(b, n);
            if l != 0 {
                if !valid(l) {
                    return Err("avl left offset invalid");
                }
                if parent(b, l) != n {
                    return Err("avl parent link mismatch");
                }
            }
            n = l;
        }
        let Some(top) = stack.pop() else { break };
        out.push(top);
        if out.len() > max_nodes {
            return Err("avl tree has more nodes than items (cycle?)");
        }
        let rt = right(b, top);
        if rt != 0 {
            if !valid(rt) {
                return Err("avl right offset invalid");
            }
            if parent(b, rt) != top {
                return Err("avl parent link mismatch");
            }
        }
        n = rt;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeSet;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    // nodes live at offsets 16 + 16*i (relative), each holding a u32 key
    // right after the 8-byte node
    fn key(b: &[u8], n: u16) -> u32 {
        get_u32(b, AVL_BASE + n as usize + 8)
    }
    fn slot(i: usize) -> u16 {
        (16 + 16 * i) as u16
    }

    fn check_balanced(b: &[u8], n: u16) -> u8 {
        if n == 0 {
            return 0;
        }
        let lh = check_balanced(b, left(b, n));
        let rh = check_balanced(b, right(b, n));
        assert!((lh as i32 - rh as i32).abs() <= 1, "unbalanced");
        let h = 1 + lh.max(rh);
        assert_eq!(height(b, n), h, "height");
        h
    }

    proptest! {
        #[test]
        fn matches_set_model(ops in proptest::collection::vec((any::<bool>(), 0u32..200), 1..400)) {
            let mut b = alloc::vec![0u8; 65536];
            let mut model = BTreeSet::new();
            let mut slots: Vec<Option<u32>> = Vec::new();
            for (ins, k) in ops {
                if ins && !model.contains(&k) {
                    let i = slots.iter().position(|s| s.is_none()).unwrap_or_else(|| { slots.push(None); slots.len() - 1 });
                    slots[i] = Some(k);
                    let n = slot(i);
                    put_u32(&mut b, AVL_BASE + n as usize + 8, k);
                    let s = search(&b, |m| k.cmp(&key(&b, m)));
                    prop_assert!(s.cmp != Ordering::Equal);
                    insert(&mut b, s.node, n, s.cmp);
                    model.insert(k);
                } else if !ins && model.contains(&k) {
                    let s = search(&b, |m| k.cmp(&key(&b, m)));
                    prop_assert_eq!(s.cmp, Ordering::Equal);
                    delete(&mut b, s.node);
                    let i = slots.iter().position(|x| *x == Some(k)).unwrap();
                    slots[i] = None;
                    model.remove(&k);
                }
                check_balanced(&b, root(&b));
                let walked = walk_checked(&b, slots.len(), |_| true).unwrap();
                let keys: Vec<u32> = walked.iter().map(|&n| key(&b, n)).collect();
                let want: Vec<u32> = model.iter().copied().collect();
                prop_assert_eq!(&keys, &want);
                // next/prev agree with the walk
                let mut n = first(&b);
                let mut fw = Vec::new();
                while n != 0 { fw.push(key(&b, n)); n = next(&b, n); }
                prop_assert_eq!(&fw, &want);
                let mut n = last(&b);
                let mut bw = Vec::new();
                while n != 0 { bw.push(key(&b, n)); n = prev(&b, n); }
                bw.reverse();
                prop_assert_eq!(&bw, &want);
            }
        }
    }

    #[test]
    fn build_sorted_is_balanced_and_relocate_keeps_links() {
        let mut b = alloc::vec![0u8; 65536];
        let nodes: Vec<u16> = (0..37).map(slot).collect();
        for (i, &n) in nodes.iter().enumerate() {
            put_u32(&mut b, AVL_BASE + n as usize + 8, i as u32);
        }
        build_sorted(&mut b, &nodes);
        check_balanced(&b, root(&b));
        // move node 5 to a free slot
        let from = slot(5);
        let to = slot(40);
        let src = AVL_BASE + from as usize;
        b.copy_within(src..src + 16, AVL_BASE + to as usize);
        relocate(&mut b, to, from);
        let keys: Vec<u32> = walk_checked(&b, 64, |_| true)
            .unwrap()
            .iter()
            .map(|&n| key(&b, n))
            .collect();
        assert_eq!(keys, (0..37).collect::<Vec<u32>>());
    }

    #[test]
    fn walk_detects_cycles() {
        let mut b = alloc::vec![0u8; 65536];
        let nodes: Vec<u16> = (0..3).map(slot).collect();
        build_sorted(&mut b, &nodes);
        // make the right child point back at the root
        let r = root(&b);
        let rc = right(&b, r);
        set_right(&mut b, rc, r);
        assert!(walk_checked(&b, 3, |_| true).is_err());
    }
}
