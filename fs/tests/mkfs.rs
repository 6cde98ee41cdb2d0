//! mkfs -> fsck clean for format v1 and v2, small and 64 GiB (sparse RAM
//! disks), plus the refusals: bad versions, too-small devices, no quorum.

mod common;
use common::*;
use scoutvm_fs::runtime::env::SeededEntropy;
use scoutvm_fs::server::commit::CommitCore;
use scoutvm_fs::storage::dev::MemDev;
use scoutvm_fs::tools::mkfs::{mkfs, MkfsError};

#[test]
fn mkfs_then_fsck_clean_v1_v2_small_and_64g() {
    for fmt in [1u64, 2] {
        for (meta_bytes, data_bytes) in [
            (1u64 << 30, 1u64 << 30),
            (64 << 30, 64 << 30),
            (70 << 20, 300 << 20),
        ] {
            let meta = MemDev::new(meta_bytes);
            let data = MemDev::new(data_bytes);
            let sb = mkfs(
                &meta,
                &data,
                &params(fmt, meta_bytes, data_bytes, fmt + meta_bytes),
            )
            .unwrap();
            assert_eq!(sb.fmt_vers, fmt);
            let rep = scoutvm_fs::tools::fsck::fsck(&meta, Some(&data), &mut |_, _, _| {});
            let mut t = String::new();
            rep.render(&mut t).unwrap();
            assert!(rep.is_clean(), "v{fmt} {meta_bytes}:\n{t}");
            assert_eq!(
                rep.meta_free + rep.meta_referenced,
                sb.total_meta_blocks - 2
            );
            assert_eq!(rep.data_free, sb.total_data_blocks - 64);
            // sparse: only the blocks mkfs wrote hold memory
            assert!(meta.pages_in_use() < 100, "{} pages", meta.pages_in_use());
            // the server opens it and can commit
            let mut srv = CommitCore::open(
                Box::new(meta),
                Box::new(data),
                Box::new(SeededEntropy::new(1)),
                Default::default(),
            )
            .unwrap();
            srv.commit().unwrap();
        }
    }
}

#[test]
fn mkfs_refuses_bad_parameters() {
    let meta = MemDev::new(1 << 30);
    let data = MemDev::new(1 << 30);
    let mut p = params(3, 1 << 30, 1 << 30, 1);
    assert!(matches!(mkfs(&meta, &data, &p), Err(MkfsError::Invalid(_))));
    p.fmt_vers = 2;
    p.meta_bytes = 1000 * 65536;
    assert!(matches!(mkfs(&meta, &data, &p), Err(MkfsError::Invalid(_))));
    p.meta_bytes = 1 << 30;
    p.data_bytes = 64 * 4096;
    assert!(matches!(mkfs(&meta, &data, &p), Err(MkfsError::Invalid(_))));
    p.data_bytes = 2 << 30; // larger than the device
    assert!(matches!(mkfs(&meta, &data, &p), Err(MkfsError::Invalid(_))));
    p.data_bytes = 1 << 30;
    p.qconf = Default::default();
    assert!(matches!(mkfs(&meta, &data, &p), Err(MkfsError::Invalid(_))));
    p = params(2, 1 << 30, 1 << 30, 1);
    p.data_alloc_zone_blocks = 10;
    assert!(matches!(mkfs(&meta, &data, &p), Err(MkfsError::Invalid(_))));
    // nothing was written by the refused attempts
    assert_eq!(meta.pages_in_use(), 0);
    assert!(!scoutvm_fs::tools::mkfs::has_volume(&meta));
    mkfs(&meta, &data, &params(2, 1 << 30, 1 << 30, 1)).unwrap();
    assert!(scoutvm_fs::tools::mkfs::has_volume(&meta));
}

#[test]
fn server_refuses_volumes_that_do_not_fit_their_devices() {
    let meta = std::rc::Rc::new(MemDev::new(2 << 30));
    let data = std::rc::Rc::new(MemDev::new(1 << 30));
    mkfs(&*meta, &*data, &params(2, 2 << 30, 1 << 30, 1)).unwrap();
    // open with a smaller meta device holding the same blocks
    let small = MemDev::new(1 << 30);
    let mut b = vec![0u8; 65536];
    use scoutvm_fs::storage::dev::BlockDev;
    for blk in 0..1031u64 {
        meta.read(blk * 65536, &mut b).unwrap();
        small.write(blk * 65536, &b).unwrap();
    }
    let e = CommitCore::open(
        Box::new(small),
        Box::new(data.clone()),
        Box::new(SeededEntropy::new(1)),
        Default::default(),
    );
    assert!(e.is_err());
    let (clean, _) = fsck_text(&*meta, Some(&*data));
    assert!(clean);
}
