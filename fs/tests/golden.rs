//! The reference mkfs volumes: our print matches the reference print line
//! for line, fsck finds them clean, and our mkfs lays out the same blocks.

mod common;
use common::*;
use scoutvm_fs::format::super_block::SuperBlock;
use scoutvm_fs::format::LG_BLOCK_SIZE;
use scoutvm_fs::runtime::env::Timespec;
use scoutvm_fs::storage::dev::BlockDev;
use scoutvm_fs::tools::mkfs::{describe, mkfs, MkfsParams};

const NAMES: [&str; 3] = ["v1", "v2", "64g"];

fn golden_print(name: &str) -> String {
    std::fs::read_to_string(shared_dir().join(format!("golden/print-meta-{name}.txt"))).unwrap()
}

fn our_print(dev: &dyn BlockDev) -> String {
    let mut s = String::new();
    scoutvm_fs::tools::print::print_volume(dev, &mut s).unwrap();
    s
}

#[test]
fn print_matches_reference_line_for_line() {
    let dir = golden_dir();
    for name in NAMES {
        let meta = FileDev::open(&dir.join(format!("meta-{name}.img")), false);
        let ours = our_print(&meta);
        let theirs = golden_print(name);
        let (o, t): (Vec<&str>, Vec<&str>) = (ours.lines().collect(), theirs.lines().collect());
        for (i, (a, b)) in o.iter().zip(t.iter()).enumerate() {
            assert_eq!(a, b, "{name}: print line {} differs", i + 1);
        }
        assert_eq!(o.len(), t.len(), "{name}: line count differs");
    }
}

#[test]
fn golden_volumes_fsck_clean() {
    let dir = golden_dir();
    for name in NAMES {
        let meta = FileDev::open(&dir.join(format!("meta-{name}.img")), false);
        let data = FileDev::open(&dir.join(format!("data-{name}.img")), false);
        let rep = scoutvm_fs::tools::fsck::fsck(&meta, Some(&data), &mut |_, _, _| {});
        let mut t = String::new();
        rep.render(&mut t).unwrap();
        assert!(rep.is_clean(), "{name}:\n{t}");
        assert!(rep.notes.is_empty(), "{name}: {:?}", rep.notes);
        let sb = scoutvm_fs::storage::block::read_super_from(&meta).unwrap();
        assert_eq!(
            rep.meta_free + rep.meta_referenced,
            sb.total_meta_blocks - 2
        );
        assert_eq!(rep.meta_referenced, 5);
        assert_eq!(rep.data_free, sb.total_data_blocks - 64);
    }
}

/// Our mkfs with the golden volume's fsid, uuid, time and slots writes the
/// same blocks, except for the AVL heights the reference gets wrong (and
/// so the crcs).
#[test]
fn mkfs_reproduces_reference_layout() {
    let dir = golden_dir();
    for name in NAMES {
        let gmeta = FileDev::open(&dir.join(format!("meta-{name}.img")), false);
        let gsb: SuperBlock = scoutvm_fs::storage::block::read_super_from(&gmeta).unwrap();
        // the root inode's times are the mkfs time
        let ino = scoutvm_fs::storage::btree_block::items(&read_lg(&gmeta, 2));
        let inode = scoutvm_fs::format::items::InodeItem::decode(&ino[1].val).unwrap();
        let p = MkfsParams {
            fmt_vers: gsb.fmt_vers,
            meta_bytes: gsb.total_meta_blocks * LG_BLOCK_SIZE as u64,
            data_bytes: gsb.total_data_blocks * 4096,
            qconf: gsb.qconf,
            fsid: gsb.hdr.fsid,
            uuid: gsb.uuid,
            now: Timespec {
                sec: inode.atime.sec,
                nsec: inode.atime.nsec,
            },
            data_alloc_zone_blocks: 0,
        };
        let meta = scoutvm_fs::storage::dev::MemDev::new(p.meta_bytes);
        let data = scoutvm_fs::storage::dev::MemDev::new(p.data_bytes);
        let sb = mkfs(&meta, &data, &p).unwrap();
        // identical supers (crc included)
        let mut a = vec![0u8; 4096];
        let mut b = vec![0u8; 4096];
        meta.read(65536, &mut a).unwrap();
        gmeta.read(65536, &mut b).unwrap();
        assert_eq!(a, b, "{name}: super differs");
        // identical quorum blocks
        for blk in 17..32u64 {
            meta.read(blk * 4096, &mut a).unwrap();
            gmeta.read(blk * 4096, &mut b).unwrap();
            assert_eq!(a, b, "{name}: quorum block {blk} differs");
        }
        // metadata blocks equal apart from crc and AVL heights
        for blk in [2u64, 3, 1028, 1029, 1030] {
            let mut x = read_lg(&meta, blk);
            let mut y = read_lg(&gmeta, blk);
            for v in [&mut x, &mut y] {
                v[0..4].fill(0);
                if blk != 3 {
                    let nr = u16::from_le_bytes([v[34], v[35]]) as usize;
                    for i in 0..nr {
                        v[48 + 56 * i + 6] = 0;
                    }
                }
            }
            assert!(x == y, "{name}: block {blk} differs");
        }
        // and the mkfs text matches the reference's
        let text = describe(
            &sb,
            &format!("meta-{name}.img"),
            &format!("data-{name}.img"),
        );
        let want =
            std::fs::read_to_string(shared_dir().join(format!("golden/mkfs-{name}.txt"))).unwrap();
        let want: String = want
            .lines()
            .filter(|l| !l.contains("too small"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(text, want, "{name}: mkfs output differs");
    }
}

fn read_lg(dev: &dyn BlockDev, blk: u64) -> Vec<u8> {
    let mut v = vec![0u8; LG_BLOCK_SIZE];
    dev.read(blk * LG_BLOCK_SIZE as u64, &mut v).unwrap();
    v
}

#[test]
fn golden_volume_opens_and_commits() {
    // copy the small v2 volume into RAM, open it with the server, modify
    // the fs root and commit: the result must still be clean
    let dir = golden_dir();
    let gmeta = FileDev::open(&dir.join("meta-v2.img"), false);
    let gdata = FileDev::open(&dir.join("data-v2.img"), false);
    let meta = std::rc::Rc::new(scoutvm_fs::sim::faultdev::FaultDev::new(gmeta.size_bytes()));
    let data = std::rc::Rc::new(scoutvm_fs::sim::faultdev::FaultDev::new(gdata.size_bytes()));
    let mut buf = vec![0u8; LG_BLOCK_SIZE];
    for blk in 0..1031u64 {
        gmeta.read(blk * LG_BLOCK_SIZE as u64, &mut buf).unwrap();
        if buf.iter().any(|&x| x != 0) {
            meta.write(blk * LG_BLOCK_SIZE as u64, &buf).unwrap();
        }
    }
    gdata.read(65536, &mut buf[..4096]).unwrap();
    data.write(65536, &buf[..4096]).unwrap();
    assert_fsck_clean(&*meta, Some(&*data));
    let mut srv = scoutvm_fs::server::commit::CommitCore::open(
        Box::new(meta.clone()),
        Box::new(data.clone()),
        Box::new(scoutvm_fs::runtime::env::SeededEntropy::new(3)),
        Default::default(),
    )
    .unwrap();
    for i in 0..200u64 {
        let seq = srv.trans_seq();
        let tx = srv.tx();
        let key = scoutvm_fs::format::Key::fs(1024 + i, 4, 0, 0);
        scoutvm_fs::storage::btree::insert(
            tx.cache,
            tx.alloc,
            &mut tx.sb.fs_root,
            scoutvm_fs::storage::btree::Item::new(key, seq, &[i as u8; 168]),
        )
        .unwrap();
        tx.sb.inode_count += 1;
        tx.sb.next_ino = 1024 + i + 1;
        if i % 50 == 49 {
            srv.commit().unwrap();
            assert_fsck_clean(&*meta, Some(&*data));
        }
    }
}

/// The super of the dump: the roots the reference `print` followed.
fn dump_super(dump: &[&str], mut sb: SuperBlock) -> SuperBlock {
    use scoutvm_fs::format::{AllocListHead, AllocRoot, BlockRef, BtreeRoot};
    // "  name: k v k v ..." -> the values by key
    let fields = |name: &str| -> std::collections::HashMap<String, String> {
        let line = dump
            .iter()
            .find(|l| l.starts_with(&format!("  {name}: ")))
            .unwrap_or_else(|| panic!("dump has no {name} line"));
        let words: Vec<&str> = line.split_once(": ").unwrap().1.split(' ').collect();
        words
            .chunks(2)
            .map(|p| (p[0].to_string(), p[1].to_string()))
            .collect()
    };
    let num = |s: &str| -> u64 {
        match s.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).unwrap(),
            None => s.parse().unwrap(),
        }
    };
    let aroot = |name: &str| {
        let f = fields(name);
        AllocRoot {
            total_len: num(&f["total_len"]),
            flags: num(&f["flags"]) as u32,
            root: BtreeRoot {
                bref: BlockRef {
                    blkno: num(&f["blkno"]),
                    seq: num(&f["seq"]),
                },
                height: num(&f["height"]) as u8,
            },
        }
    };
    let head = |name: &str| {
        let f = fields(name);
        AllocListHead {
            bref: BlockRef {
                blkno: num(&f["blkno"]),
                seq: num(&f["seq"]),
            },
            total_nr: num(&f["total_nr"]),
            first_nr: num(&f["first_nr"]) as u32,
            flags: num(&f["flags"]) as u32,
        }
    };
    // the super's btree roots show their seq in hex
    let broot = |name: &str| {
        let f = fields(name);
        BtreeRoot {
            bref: BlockRef {
                blkno: num(&f["blkno"]),
                seq: u64::from_str_radix(&f["seq"], 16).unwrap(),
            },
            height: num(&f["height"]) as u8,
        }
    };
    sb.meta_alloc = [aroot("meta_alloc[0]"), aroot("meta_alloc[1]")];
    sb.data_alloc = aroot("data_alloc");
    sb.server_meta_avail = [head("server_meta_avail[0]"), head("server_meta_avail[1]")];
    sb.server_meta_freed = [head("server_meta_freed[0]"), head("server_meta_freed[1]")];
    sb.fs_root = broot("fs_root");
    sb.logs_root = broot("logs_root");
    sb.log_merge = broot("log_merge");
    sb.mounted_clients = broot("mounted_clients");
    sb.srch_root = broot("srch_root");
    sb
}

/// The used volume (ScoutVM wrote its log tree: inodes, dirents, readdir
/// and backref items, xattrs in one and in many parts, symlinks in one and
/// two chunks, extents, index items and deletions): print matches the
/// reference print line for line.
///
/// The stored image was mounted once more after the dump was taken (its
/// super is at seq 16 where the dump shows seq 9, with the log tree merged
/// into fs_root), but every block the dump shows is still on it untouched
/// (copy on write; their crcs and seqs match). So the super's own lines
/// (the first 22) are not compared; the quorum blocks are, from the image's
/// super; everything after them is printed from the roots the dump's super
/// lists.
#[test]
fn print_matches_reference_on_used_volume() {
    let shared = shared_dir();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("golden-used");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let st = std::process::Command::new("tar")
        .arg("-xSf")
        .arg(shared.join("golden/used-v2.meta.tar.xz"))
        .arg("-C")
        .arg(&dir)
        .status()
        .expect("running tar");
    assert!(st.success(), "tar -xSf of the used volume failed");
    let meta = FileDev::open(&dir.join("used-v2.meta"), false);
    let theirs = golden_print("used-v2");
    let t: Vec<&str> = theirs.lines().collect();
    const SUPER_LINES: usize = 22;
    assert!(t[SUPER_LINES].starts_with("quorum blkno 17"));

    let whole = our_print(&meta);
    let quorum_end = SUPER_LINES + 15 * 9;
    let mut ours: Vec<String> = whole
        .lines()
        .skip(SUPER_LINES)
        .take(quorum_end - SUPER_LINES)
        .map(str::to_string)
        .collect();
    let sb = dump_super(
        &t,
        scoutvm_fs::storage::block::read_super_from(&meta).unwrap(),
    );
    let mut rest = String::new();
    scoutvm_fs::tools::print::print_structures(
        &meta,
        &sb,
        &scoutvm_fs::tools::print::PrintOptions::default(),
        &mut rest,
    )
    .unwrap();
    ours.extend(rest.lines().map(str::to_string));
    let t = &t[SUPER_LINES..];
    for (i, (a, b)) in ours.iter().zip(t.iter()).enumerate() {
        assert_eq!(a, b, "used-v2: print line {} differs", i + 1 + SUPER_LINES);
    }
    assert_eq!(ours.len(), t.len(), "used-v2: line count differs");
    let _ = std::fs::remove_dir_all(&dir);
}
