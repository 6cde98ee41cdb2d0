//! `mount_cluster` on host RAM disks in virtual time: a single-slot volume
//! elects its own node, which serves and mounts through the quorum, comes
//! back by itself after a crash (its earlier life is fenced as a
//! predecessor of its own slot), and a node of a 3-slot volume without a
//! majority never starts a server nor writes the super block.

mod common;
use common::*;
use scoutvm_fs::client::cluster_node::{mount_cluster, ClusterSlot, OwnSlotFence, SoloDatagrams};
use scoutvm_fs::client::node::NodeOptions;
use scoutvm_fs::cluster::fence::{FenceAgent, ManualFence};
use scoutvm_fs::cluster::quorum::HB_TIMEOUT_MIN_NS;
use scoutvm_fs::cluster::transport::{MemNet, Transport};
use scoutvm_fs::format::{SM_BLOCK_SHIFT, SM_BLOCK_SIZE, SUPER_BLKNO};
use scoutvm_fs::posix::mount::MountOptions;
use scoutvm_fs::posix::types::Cred;
use scoutvm_fs::runtime::env::{Entropy, SeededEntropy};
use scoutvm_fs::storage::dev::BlockDev;
use scoutvm_fs::tools::mkfs::mkfs;
use std::rc::Rc;

const META: u64 = 1 << 30;
const DATA: u64 = 256 << 20;

fn opts() -> NodeOptions {
    test_node_options(MountOptions::default())
}

fn solo(
    meta: &Rc<scoutvm_fs::sim::faultdev::FaultDev>,
    data: &Rc<scoutvm_fs::sim::faultdev::FaultDev>,
    seed: u64,
) -> (
    Rc<scoutvm_fs::posix::mount::Mount>,
    scoutvm_fs::client::cluster_node::ClusterNode,
) {
    let fence: Rc<dyn FenceAgent> =
        Rc::new(OwnSlotFence::new("10.0.2.15:7100", ManualFence::new()));
    let net: Rc<dyn Transport> = Rc::new(MemNet::new());
    let ent: Rc<dyn Entropy> = Rc::new(SeededEntropy::new(seed));
    let clock = Rc::new(scoutvm_fs::runtime::env::ManualClock::new(
        Default::default(),
    ));
    block_on(mount_cluster(
        meta.clone(),
        data.clone(),
        net,
        Some(ClusterSlot {
            slot: 0,
            sock: Rc::new(SoloDatagrams),
            hb_timeout_ns: HB_TIMEOUT_MIN_NS,
        }),
        fence,
        clock,
        ent,
        handle(),
        opts(),
    ))
    .expect("mount_cluster")
}

#[test]
fn single_slot_mounts_through_quorum_and_recovers_from_crash() {
    let (meta, data) = small_volume(META, DATA, 7);
    let c = Cred::root();
    let (m, node) = solo(&meta, &data, 1);
    assert_eq!(node.server_starts(), 1);
    let st = node.quorum_status().expect("slot 0 has an agent");
    assert_eq!(st.leader, Some(0));
    assert_eq!(node.client().server_term(), st.term);
    let a = block_on(m.create(&c, 1, b"f", 0o644)).unwrap();
    block_on(m.write(a.ino, 0, b"hello")).unwrap();
    block_on(m.sync()).unwrap();
    let term1 = st.term;
    // crash: nothing more written, the quorum blocks keep our election
    block_on(node.abandon());
    drop(m);
    let (m, node) = solo(&meta, &data, 2);
    let st = node.quorum_status().unwrap();
    assert!(st.term > term1, "a new term after the crash: {st}");
    let a = block_on(m.lookup(&c, 1, b"f")).unwrap();
    assert_eq!(block_on(m.read(a.ino, 0, 16)).unwrap(), b"hello");
    block_on(node.unmount()).unwrap();
    assert_fsck_clean(&*meta, Some(&*data));
    // a clean restart elects again
    let (m, node) = solo(&meta, &data, 3);
    let a = block_on(m.lookup(&c, 1, b"f")).unwrap();
    assert_eq!(a.size, 5);
    block_on(node.unmount()).unwrap();
    assert_fsck_clean(&*meta, Some(&*data));
}

#[test]
fn node_without_majority_never_writes() {
    let meta = Rc::new(scoutvm_fs::sim::faultdev::FaultDev::new(META));
    let data = Rc::new(scoutvm_fs::sim::faultdev::FaultDev::new(DATA));
    let mut p = params(2, META, DATA, 9);
    p.qconf = qconf(&["0,10.0.0.1,7100", "1,10.0.0.2,7100", "2,10.0.0.3,7100"]);
    mkfs(&*meta, &*data, &p).unwrap();
    let read_super = || {
        let mut b = vec![0u8; SM_BLOCK_SIZE];
        meta.read(SUPER_BLKNO << SM_BLOCK_SHIFT, &mut b).unwrap();
        b
    };
    let before = read_super();
    let net: Rc<dyn Transport> = Rc::new(MemNet::new());
    let ent: Rc<dyn Entropy> = Rc::new(SeededEntropy::new(4));
    let clock = Rc::new(scoutvm_fs::runtime::env::ManualClock::new(
        Default::default(),
    ));
    let fut = mount_cluster(
        meta.clone(),
        data.clone(),
        net,
        Some(ClusterSlot {
            slot: 0,
            sock: Rc::new(SoloDatagrams),
            hb_timeout_ns: HB_TIMEOUT_MIN_NS,
        }),
        ManualFence::new(),
        clock,
        ent,
        handle(),
        opts(),
    );
    // two minutes of virtual time: elections fail (no vote from slots 1 and 2)
    let r = block_on(handle().timeout_ns(120_000_000_000, fut));
    assert!(r.is_err(), "mounted without a majority");
    assert_eq!(
        read_super(),
        before,
        "the super block was written without quorum"
    );
}
