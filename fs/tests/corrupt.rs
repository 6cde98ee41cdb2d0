//! Corruption: flip bytes in random metadata blocks (and damage blocks
//! while keeping their crc valid); reads return typed errors, never
//! panic, stale reads retried twice become EIO, and fsck names the block.

mod common;
use common::*;
use scoutvm_fs::errno::Errno;
use scoutvm_fs::format::key::Key;
use scoutvm_fs::runtime::env::{Entropy, SeededEntropy};
use scoutvm_fs::server::commit::{CommitConfig, CommitCore};
use scoutvm_fs::sim::faultdev::FaultDev;
use scoutvm_fs::storage::allocator::ext_list;
use scoutvm_fs::storage::btree::{self, Item};
use scoutvm_fs::storage::store_error::{retry_stale, StoreError};
use std::rc::Rc;

const META: u64 = 1 << 30;
const DATA: u64 = 64 << 20;

fn build() -> (Rc<FaultDev>, Rc<FaultDev>, Vec<u64>, Vec<u64>) {
    let (meta, data) = small_volume(META, DATA, 11);
    let mut srv = CommitCore::open(
        Box::new(meta.clone()),
        Box::new(data.clone()),
        Box::new(SeededEntropy::new(11)),
        CommitConfig::default(),
    )
    .unwrap();
    let rng = SeededEntropy::new(5);
    for i in 0..6000u64 {
        let seq = srv.trans_seq();
        let v = vec![i as u8; (rng.next_u64() % 500) as usize];
        let tx = srv.tx();
        btree::insert(
            tx.cache,
            tx.alloc,
            &mut tx.sb.fs_root,
            Item::new(Key::fs(7, 8, i, 0), seq, &v),
        )
        .unwrap();
        if i % 1000 == 999 {
            srv.commit().unwrap();
        }
    }
    srv.commit().unwrap();
    assert!(srv.super_block().fs_root.height >= 2);
    let rep = scoutvm_fs::tools::fsck::fsck(&*meta, Some(&*data), &mut |_, _, _| {});
    assert!(rep.is_clean());
    // blocks of the fs_root tree, found by walking it
    let mut fs_blocks = Vec::new();
    let root = srv.super_block().fs_root;
    collect_tree_blocks(srv.cache(), &root.bref, root.height - 1, &mut fs_blocks);
    (meta, data, rep.referenced, fs_blocks)
}

fn collect_tree_blocks(
    cache: &mut scoutvm_fs::storage::block::BlockCache,
    r: &scoutvm_fs::format::BlockRef,
    level: u8,
    out: &mut Vec<u64>,
) {
    out.push(r.blkno);
    if level == 0 {
        return;
    }
    let b = btree::read_block(cache, r, level).unwrap();
    let children: Vec<_> = scoutvm_fs::storage::btree_block::items(&b.borrow())
        .iter()
        .map(|it| scoutvm_fs::format::BlockRef::decode(&it.val))
        .collect();
    for c in children {
        collect_tree_blocks(cache, &c, level - 1, out);
    }
}

fn copy(meta: &FaultDev) -> Rc<FaultDev> {
    Rc::new(FaultDev::from_pages(META, meta.durable_pages()))
}

/// Read everything reachable; Ok(()) or the first error, never a panic.
fn read_everything(srv: &mut CommitCore) -> Result<(), StoreError> {
    let sb = *srv.super_block();
    btree::collect_all(srv.cache(), &sb.fs_root)?;
    for r in [sb.meta_alloc[0], sb.meta_alloc[1], sb.data_alloc] {
        ext_list(srv.cache(), &r, usize::MAX)?;
    }
    Ok(())
}

#[test]
fn flipped_bytes_are_errors_and_fsck_names_the_block() {
    let (meta, data, referenced, fs_blocks) = build();
    let rng = SeededEntropy::new(77);
    for trial in 0..300 {
        let b = referenced[(rng.next_u64() % referenced.len() as u64) as usize];
        let off = rng.next_u64() % 65536;
        let xor = 1u8 << (rng.next_u64() % 8);
        let img = copy(&meta);
        img.corrupt_byte(b * 65536 + off, xor);
        let rep = scoutvm_fs::tools::fsck::fsck(&*img, Some(&*data), &mut |_, _, _| {});
        assert!(
            !rep.is_clean(),
            "trial {trial}: flip in block {b} at {off} not found"
        );
        assert!(
            rep.findings.iter().any(|f| f.blkno == Some(b)),
            "trial {trial}: fsck did not name block {b}: {:?}",
            rep.findings
        );
        let mut srv = CommitCore::open(
            Box::new(img.clone()),
            Box::new(data.clone()),
            Box::new(SeededEntropy::new(1)),
            CommitConfig::default(),
        )
        .unwrap();
        let r = read_everything(&mut srv);
        if fs_blocks.contains(&b) {
            let e = r.expect_err("read through a corrupted fs_root block succeeded");
            assert_eq!(e.blkno(), Some(b));
        }
        // retrying a stale read once more ends in EIO
        if fs_blocks.contains(&b) {
            let root = srv.super_block().fs_root;
            let r = retry_stale(
                || btree::collect_all(srv.cache(), &root).map(|_| ()),
                |_| {},
            );
            // the cache dropped the bad block, so the retry re-read it
            assert_eq!(r.unwrap_err().errno(), Errno::EIO);
        }
        // modifying and committing either works or fails cleanly
        let seq = srv.trans_seq();
        let tx = srv.tx();
        let _ = btree::force(
            tx.cache,
            tx.alloc,
            &mut tx.sb.fs_root,
            Item::new(Key::fs(7, 8, 3, 0), seq, &[1; 40]),
        );
        let _ = srv.commit();
    }
}

fn reseal(img: &FaultDev, blkno: u64, edit: impl FnOnce(&mut [u8])) {
    use scoutvm_fs::storage::dev::BlockDev;
    let mut b = vec![0u8; 65536];
    img.read(blkno * 65536, &mut b).unwrap();
    edit(&mut b);
    scoutvm_fs::storage::block::seal_block(&mut b);
    img.write(blkno * 65536, &b).unwrap();
    img.flush().unwrap();
}

#[test]
fn damage_with_valid_crc_is_corrupt_not_panic() {
    let (meta, data, _, fs_blocks) = build();
    // fs_blocks[0] is the root (a parent), the last one a leaf
    let leaf = *fs_blocks.last().unwrap();
    let parent = fs_blocks[0];
    type Edit = Box<dyn Fn(&mut [u8])>;
    let edits: Vec<(u64, &str, Edit)> = vec![
        (
            leaf,
            "nr_items",
            Box::new(|b: &mut [u8]| b[34] = b[34].wrapping_add(3)),
        ),
        (
            leaf,
            "mid_free_len",
            Box::new(|b: &mut [u8]| b[38..40].copy_from_slice(&60000u16.to_le_bytes())),
        ),
        (
            leaf,
            "avl link",
            Box::new(|b: &mut [u8]| {
                b[48 + 56 * 3 + 2..48 + 56 * 3 + 4].copy_from_slice(&7u16.to_le_bytes())
            }),
        ),
        (
            leaf,
            "avl root",
            Box::new(|b: &mut [u8]| b[32..34].copy_from_slice(&9999u16.to_le_bytes())),
        ),
        (
            leaf,
            "value offset",
            Box::new(|b: &mut [u8]| b[48 + 50..48 + 52].copy_from_slice(&900u16.to_le_bytes())),
        ),
        (leaf, "level", Box::new(|b: &mut [u8]| b[40] = 3)),
        (
            parent,
            "child ref",
            Box::new(|b: &mut [u8]| {
                let vo = u16::from_le_bytes([b[48 + 48], b[48 + 49]]) as usize;
                b[vo + 8] ^= 0xff; // child seq
            }),
        ),
        (
            parent,
            "key order",
            Box::new(|b: &mut [u8]| {
                // swap the keys of two items
                let (a, c) = (48 + 8, 48 + 56 + 8);
                let tmp: Vec<u8> = b[a..a + 32].to_vec();
                b.copy_within(c..c + 32, a);
                b[c..c + 32].copy_from_slice(&tmp);
            }),
        ),
    ];
    for (blk, what, edit) in edits {
        let img = copy(&meta);
        reseal(&img, blk, |b| edit(b));
        let rep = scoutvm_fs::tools::fsck::fsck(&*img, Some(&*data), &mut |_, _, _| {});
        assert!(!rep.is_clean(), "{what}: not found by fsck");
        assert!(
            rep.findings.iter().any(|f| f.blkno.is_some()),
            "{what}: no block named: {:?}",
            rep.findings
        );
        let mut srv = CommitCore::open(
            Box::new(img.clone()),
            Box::new(data.clone()),
            Box::new(SeededEntropy::new(1)),
            CommitConfig::default(),
        )
        .unwrap();
        let e = read_everything(&mut srv).expect_err(what);
        assert_eq!(
            e.errno(),
            if matches!(e, StoreError::Stale { .. }) {
                Errno::ESTALE
            } else {
                Errno::EIO
            },
            "{what}: {e}"
        );
        let _ = srv.commit();
    }
}

#[test]
fn corrupt_super_and_quorum_blocks_are_reported() {
    let (meta, data, _, _) = build();
    let img = copy(&meta);
    img.corrupt_byte(65536 + 100, 1);
    let (clean, text) = fsck_text(&*img, Some(&*data));
    assert!(!clean && text.contains("super block"), "{text}");
    assert!(CommitCore::open(
        Box::new(img),
        Box::new(data.clone()),
        Box::new(SeededEntropy::new(1)),
        CommitConfig::default()
    )
    .is_err());
    let img = copy(&meta);
    img.corrupt_byte(17 * 4096 + 40, 1);
    let (clean, text) = fsck_text(&*img, Some(&*data));
    assert!(!clean && text.contains("quorum block 17"), "{text}");
    // swapped devices
    let (clean, text) = fsck_text(&*data, Some(&*meta));
    assert!(!clean && text.contains("swapped"), "{text}");
    assert!(CommitCore::open(
        Box::new(data.clone()),
        Box::new(meta.clone()),
        Box::new(SeededEntropy::new(1)),
        CommitConfig::default()
    )
    .is_err());
    // a device that is not a volume
    let blank = Rc::new(FaultDev::new(META));
    let (clean, text) = fsck_text(&*blank, None);
    assert!(!clean && text.contains("not a scoutfs volume"), "{text}");
}

/// Random damage that keeps the crc valid, in random referenced blocks:
/// reading, modifying and committing return errors or succeed, and never
/// panic.
#[test]
fn random_damage_with_valid_crc_never_panics() {
    let (meta, data, referenced, _) = build();
    let rng = SeededEntropy::new(123);
    let mut errors = 0;
    for _ in 0..200 {
        let blk = referenced[(rng.next_u64() % referenced.len() as u64) as usize];
        let img = copy(&meta);
        reseal(&img, blk, |b| {
            for _ in 0..1 + rng.next_u64() % 4 {
                // mostly the header and item array, where structure lives
                let off = if rng.next_u64().is_multiple_of(4) {
                    (rng.next_u64() % 65536) as usize
                } else {
                    32 + (rng.next_u64() % 2048) as usize
                };
                b[off] = rng.next_u64() as u8;
            }
        });
        let mut srv = CommitCore::open(
            Box::new(img.clone()),
            Box::new(data.clone()),
            Box::new(SeededEntropy::new(1)),
            CommitConfig::default(),
        )
        .unwrap();
        if read_everything(&mut srv).is_err() {
            errors += 1;
        }
        for i in 0..20u64 {
            let seq = srv.trans_seq();
            let k = Key::fs(7, 8, rng.next_u64() % 7000, 0);
            let tx = srv.tx();
            let _ = if i % 3 == 0 {
                btree::delete(tx.cache, tx.alloc, &mut tx.sb.fs_root, &k).map(|_| ())
            } else {
                btree::force(
                    tx.cache,
                    tx.alloc,
                    &mut tx.sb.fs_root,
                    Item::new(k, seq, &[9; 300]),
                )
            };
        }
        let _ = srv.alloc_data(10);
        let _ = srv.commit();
        let _ = scoutvm_fs::tools::fsck::fsck(&*img, Some(&*data), &mut |_, _, _| {});
        let mut s = String::new();
        let _ = scoutvm_fs::tools::print::print_volume(&*img, &mut s);
    }
    assert!(
        errors > 50,
        "only {errors} damaged volumes gave read errors"
    );
}

/// Damage the super's fields (crc kept valid): open refuses or the server
/// fails cleanly; fsck and print report, nothing panics.
#[test]
fn damaged_super_fields_never_panic() {
    use scoutvm_fs::storage::dev::BlockDev;
    let (meta, data, _, _) = build();
    let rng = SeededEntropy::new(321);
    for _ in 0..300 {
        let img = copy(&meta);
        let mut b = vec![0u8; 4096];
        img.read(65536, &mut b).unwrap();
        for _ in 0..1 + rng.next_u64() % 3 {
            // somewhere in the fields after the header
            let off = 32 + (rng.next_u64() % (1488 - 32)) as usize;
            b[off] = rng.next_u64() as u8;
        }
        scoutvm_fs::storage::block::seal_block(&mut b);
        img.write(65536, &b).unwrap();
        img.flush().unwrap();
        let _ = scoutvm_fs::tools::fsck::fsck(&*img, Some(&*data), &mut |_, _, _| {});
        let mut s = String::new();
        let _ = scoutvm_fs::tools::print::print_volume(&*img, &mut s);
        if let Ok(mut srv) = CommitCore::open(
            Box::new(img.clone()),
            Box::new(data.clone()),
            Box::new(SeededEntropy::new(1)),
            CommitConfig::default(),
        ) {
            let _ = read_everything(&mut srv);
            let seq = srv.trans_seq();
            let tx = srv.tx();
            let _ = btree::force(
                tx.cache,
                tx.alloc,
                &mut tx.sb.fs_root,
                Item::new(Key::fs(7, 8, 1, 1), seq, &[1; 10]),
            );
            let _ = srv.alloc_data(5);
            let _ = srv.commit();
        }
    }
}

/// Issue 16 item 5: a crc-valid allocator list block whose blknos are
/// wrong (block 0, a block past the device end, the same block twice) is
/// a corruption error when the allocator hands them out, never a panic,
/// and fsck reports it.
#[test]
fn alloc_list_blocks_with_wrong_blknos_are_corrupt_not_panic() {
    use scoutvm_fs::format::alloc::off;
    use scoutvm_fs::storage::allocator::{lb_nr, lb_start};
    let (meta, data, _, _) = build();
    let sb = scoutvm_fs::storage::block::read_super_from(&*meta).unwrap();
    let dev_blocks = META / 65536;
    type Edit = Box<dyn Fn(&mut [u8])>;
    let set = |b: &mut [u8], i: usize, v: u64| {
        b[off::BLKNOS + i * 8..off::BLKNOS + i * 8 + 8].copy_from_slice(&v.to_le_bytes())
    };
    let edits: Vec<(&str, Edit)> = vec![
        (
            "blkno 0",
            Box::new(move |b: &mut [u8]| {
                let (s, n) = (lb_start(b), lb_nr(b));
                for i in s..s + n {
                    set(b, i, 0);
                }
            }),
        ),
        (
            "past the device end",
            Box::new(move |b: &mut [u8]| {
                let (s, n) = (lb_start(b), lb_nr(b));
                for i in s..s + n {
                    set(b, i, dev_blocks + i as u64);
                }
            }),
        ),
        (
            "a duplicate",
            Box::new(move |b: &mut [u8]| {
                let (s, n) = (lb_start(b), lb_nr(b));
                let v = u64::from_le_bytes(
                    b[off::BLKNOS + s * 8..off::BLKNOS + s * 8 + 8]
                        .try_into()
                        .unwrap(),
                );
                for i in s..s + n {
                    set(b, i, v);
                }
            }),
        ),
    ];
    for (what, edit) in edits {
        let img = copy(&meta);
        for head in sb.server_meta_avail {
            assert!(
                !head.bref.is_null() && head.first_nr > 4,
                "{what}: {head:?}"
            );
            reseal(&img, head.bref.blkno, |b| edit(b));
        }
        let rep = scoutvm_fs::tools::fsck::fsck(&*img, Some(&*data), &mut |_, _, _| {});
        assert!(!rep.is_clean(), "{what}: not found by fsck");
        let mut srv = CommitCore::open(
            Box::new(img.clone()),
            Box::new(data.clone()),
            Box::new(SeededEntropy::new(1)),
            CommitConfig::default(),
        )
        .unwrap();
        let mut first_err = None;
        for i in 0..64u64 {
            let seq = srv.trans_seq();
            let tx = srv.tx();
            if let Err(e) = btree::insert(
                tx.cache,
                tx.alloc,
                &mut tx.sb.fs_root,
                Item::new(Key::fs(9, 9, i, 0), seq, b"new"),
            ) {
                first_err = Some(e);
                break;
            }
        }
        let e = first_err.unwrap_or_else(|| panic!("{what}: allocations succeeded"));
        assert!(
            matches!(e, StoreError::Corrupt { .. }),
            "{what}: {e:?} is not a corruption"
        );
        assert_eq!(e.errno(), Errno::EIO, "{what}");
    }
}

/// A parent block whose child ref (crc valid) names block 0, a block past
/// the device end, a blkno that would alias a low block when shifted, the
/// parent itself (a cycle) or a block of another kind: reads fail with
/// EIO/ESTALE (never a panic, never the aliased block) and fsck names the
/// parent's child.
#[test]
fn btree_child_refs_with_wrong_targets_are_errors_not_panic() {
    use scoutvm_fs::format::block::BlockHeader;
    let (meta, data, _, fs_blocks) = build();
    let sb = scoutvm_fs::storage::block::read_super_from(&*meta).unwrap();
    let parent = fs_blocks[0];
    let other = sb.server_meta_avail[0].bref;
    let dev_blocks = META / 65536;
    // the first child ref of the parent: (blkno, seq) at the item's value
    let set_child = |b: &mut [u8], blkno: u64, seq: u64| {
        let vo = u16::from_le_bytes([b[48 + 48], b[48 + 49]]) as usize;
        b[vo..vo + 8].copy_from_slice(&blkno.to_le_bytes());
        b[vo + 8..vo + 16].copy_from_slice(&seq.to_le_bytes());
    };
    type Edit = Box<dyn Fn(&mut [u8])>;
    let edits: Vec<(&str, Edit)> = vec![
        ("blkno 0", Box::new(move |b: &mut [u8]| set_child(b, 0, 1))),
        (
            "past the device end",
            Box::new(move |b: &mut [u8]| set_child(b, dev_blocks + 3, 1)),
        ),
        (
            "aliasing blkno",
            Box::new(move |b: &mut [u8]| {
                let h = BlockHeader::decode(b);
                set_child(b, (1 << 48) + h.blkno, h.seq)
            }),
        ),
        (
            "itself",
            Box::new(move |b: &mut [u8]| {
                let h = BlockHeader::decode(b);
                set_child(b, h.blkno, h.seq)
            }),
        ),
        (
            "a block of another kind",
            Box::new(move |b: &mut [u8]| set_child(b, other.blkno, other.seq)),
        ),
    ];
    for (what, edit) in edits {
        let img = copy(&meta);
        reseal(&img, parent, |b| edit(b));
        let rep = scoutvm_fs::tools::fsck::fsck(&*img, Some(&*data), &mut |_, _, _| {});
        assert!(!rep.is_clean(), "{what}: not found by fsck");
        assert!(
            rep.findings.iter().any(|f| f.blkno.is_some()),
            "{what}: no block named: {:?}",
            rep.findings
        );
        let mut srv = CommitCore::open(
            Box::new(img.clone()),
            Box::new(data.clone()),
            Box::new(SeededEntropy::new(1)),
            CommitConfig::default(),
        )
        .unwrap();
        let srv = std::cell::RefCell::new(&mut srv);
        let e = retry_stale(
            || read_everything(&mut srv.borrow_mut()),
            |b| srv.borrow_mut().cache().invalidate(b),
        )
        .expect_err(what);
        assert!(
            matches!(e, StoreError::Corrupt { .. }),
            "{what}: {e:?} is not a corruption"
        );
        assert_eq!(e.errno(), Errno::EIO, "{what}: {e}");
    }
}
