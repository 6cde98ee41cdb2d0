//! Issue 16 item 4: small metadata devices work with the default server
//! configuration. The reserve and the allocator fill targets are sized
//! for big devices (a reserve of about 2.1 GiB); on a 1 or 2 GiB metadata
//! device they are scaled to the device (docs/commit.md), so a fresh
//! volume mounts and takes directories and files, and stays fsck clean.

mod common;
use common::*;
use scoutvm_fs::client::node::NodeOptions;
use scoutvm_fs::posix::types::*;

/// Default options (the real reserves and targets), no background tasks.
fn opts() -> NodeOptions {
    NodeOptions {
        tick_ns: 0,
        merge_poll_ns: 0,
        ..NodeOptions::default()
    }
}

fn small_meta_device_takes_files(meta_bytes: u64) {
    let v = RealVol::new(meta_bytes, 256 << 20, meta_bytes >> 30, opts());
    let c = Cred::root();
    let (m, node) = v.mount();
    let mut files = Vec::new();
    for d in 0..4u32 {
        let dir = block_on(m.mkdir(&c, 1, format!("d{d}").as_bytes(), 0o755))
            .unwrap_or_else(|e| panic!("mkdir d{d} on a {meta_bytes} byte meta device: {e:?}"));
        let sub = block_on(m.mkdir(&c, dir.ino, b"sub", 0o755)).unwrap();
        for f in 0..50u32 {
            let a = block_on(m.create(&c, sub.ino, format!("f{f}").as_bytes(), 0o644)).unwrap();
            block_on(m.write(a.ino, 0, format!("{d}/{f}").as_bytes())).unwrap();
            files.push((a.ino, format!("{d}/{f}")));
        }
        block_on(m.sync()).unwrap();
    }
    drop(m);
    block_on(node.unmount()).unwrap();
    v.fsck();
    let (m, node) = v.mount();
    for (ino, want) in &files {
        assert_eq!(block_on(m.read(*ino, 0, 64)).unwrap(), want.as_bytes());
    }
    block_on(m.mkdir(&c, 1, b"after-remount", 0o755)).unwrap();
    drop(m);
    block_on(node.unmount()).unwrap();
    v.fsck();
}

#[test]
fn one_gib_meta_device_takes_directories_and_files() {
    small_meta_device_takes_files(1 << 30);
}

#[test]
fn two_gib_meta_device_takes_directories_and_files() {
    small_meta_device_takes_files(2 << 30);
}
