//! Volumes made by the reference mkfs mount through the real server and
//! client: the root directory is there, files can be created, written,
//! merged into the fs root, remounted, and fsck stays clean.

mod common;
use common::*;
use scoutvm_fs::client::node::{mount_volume, NodeOptions};
use scoutvm_fs::posix::mount::MountOptions;
use scoutvm_fs::posix::types::*;
use scoutvm_fs::runtime::env::{Entropy, SeededEntropy};
use std::path::Path;
use std::rc::Rc;

fn copy_sparse(src: &Path, dst: &Path) {
    let st = std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(src)
        .arg(dst)
        .status()
        .expect("running cp");
    assert!(st.success(), "cp {} failed", src.display());
}

fn exercise(name: &str, opts: NodeOptions) {
    let src = golden_dir();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("golden-mount-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for dev in ["meta", "data"] {
        copy_sparse(
            &src.join(format!("{dev}-{name}.img")),
            &dir.join(format!("{dev}.img")),
        );
    }
    let meta: Rc<dyn scoutvm_fs::storage::dev::BlockDev> =
        Rc::new(FileDev::open(&dir.join("meta.img"), true));
    let data: Rc<dyn scoutvm_fs::storage::dev::BlockDev> =
        Rc::new(FileDev::open(&dir.join("data.img"), true));
    let clock = Rc::new(scoutvm_fs::runtime::env::ManualClock::new(Timespec {
        sec: 1_700_000_000,
        nsec: 0,
    }));
    let c = Cred::root();
    for round in 0..2u64 {
        let ent: Rc<dyn Entropy> = Rc::new(SeededEntropy::new(round + 1));
        let (m, node) = block_on(mount_volume(
            meta.clone(),
            data.clone(),
            clock.clone(),
            ent,
            handle(),
            opts,
        ))
        .unwrap_or_else(|e| panic!("{name}: mount: {e:?}"));
        let root = block_on(m.getattr(1)).unwrap();
        assert_eq!(root.mode & S_IFMT, S_IFDIR, "{name}: root is a directory");
        if round == 0 {
            assert_eq!(root.nlink, 2);
            assert!(
                readdir_all(&m, 1, 10).is_empty(),
                "{name}: new root is empty"
            );
            let d = block_on(m.mkdir(&c, 1, b"dir", 0o755)).unwrap();
            let f = block_on(m.create(&c, d.ino, b"file", 0o644)).unwrap();
            block_on(m.write(f.ino, 0, b"hello from scoutvm")).unwrap();
            block_on(m.setxattr(&c, f.ino, b"user.k", b"v", 0)).unwrap();
            block_on(m.sync()).unwrap();
            block_on(node.start_merge()).unwrap();
            merge_until_idle(&node);
        } else {
            let d = block_on(m.lookup(&c, 1, b"dir")).unwrap();
            let f = block_on(m.lookup(&c, d.ino, b"file")).unwrap();
            assert_eq!(
                block_on(m.read(f.ino, 0, 100)).unwrap(),
                b"hello from scoutvm"
            );
            assert_eq!(block_on(m.getxattr(&c, f.ino, b"user.k")).unwrap(), b"v");
        }
        drop(m);
        block_on(node.unmount()).unwrap();
        assert_fsck_clean(&*meta, Some(&*data));
        let sb = scoutvm_fs::storage::block::read_super_from(&*meta).unwrap();
        assert!(
            sb.mounted_clients.is_empty(),
            "{name}: at rest after unmount"
        );
    }
}

#[test]
fn reference_64g_volume_mounts_with_default_options() {
    let o = NodeOptions {
        tick_ns: 0,
        merge_poll_ns: 0,
        ..NodeOptions::default()
    };
    exercise("64g", o);
}

#[test]
fn reference_small_volumes_mount() {
    // 1 GiB metadata devices are far below scoutfs' metadata reserve
    // (about 2 GiB for one mount): mount them with a small reserve
    for name in ["v1", "v2"] {
        exercise(name, test_node_options(MountOptions::default()));
    }
}
