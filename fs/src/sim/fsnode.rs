//! A scoutfs node in the world: the real backend (server role, the
//! mount's client over the simulated network, log trees, merges) and the
//! POSIX mount, composed by [`mount_volume_on`] exactly as the appliance
//! does, on the node's disk handles, clock, entropy and transport.

use crate::client::node::{mount_volume_on, NodeHandle, NodeOptions};
use crate::cluster::transport::LocalFut;
use crate::errno::{Errno, FsResult};
use crate::format::super_block::QuorumConfig;
use crate::posix::mount::{Mount, MountOptions};
use crate::runtime::env::Timespec;
use crate::runtime::node::NodeId;
use crate::sim::disk::SimDisk;
use crate::sim::fault::{CrashTrigger, Loss};
use crate::sim::world::{NodeDown, Software, World};
use crate::storage::dev::BlockDev;
use crate::tools::mkfs::{mkfs, parse_quorum_slot, uuid_from_random, MkfsParams};
use alloc::boxed::Box;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use core::any::Any;
use core::cell::RefCell;

/// Meta device size of a simulated volume (sparse).
pub const META_BYTES: u64 = 8 << 30;
/// Data device size of a simulated volume (sparse).
pub const DATA_BYTES: u64 = 1 << 30;

/// A volume: a meta and a data disk.
#[derive(Clone)]
pub struct Volume {
    pub meta: Rc<SimDisk>,
    pub data: Rc<SimDisk>,
}

impl Volume {
    /// Two new disks in `world`, attached to `node`.
    pub fn add(world: &World, node: NodeId, name: &str) -> Volume {
        let meta = world.add_disk(&format!("{name}.meta"), META_BYTES);
        let data = world.add_disk(&format!("{name}.data"), DATA_BYTES);
        world.attach(node, meta.id());
        world.attach(node, data.id());
        Volume { meta, data }
    }

    /// Format with mkfs (fixed fsid, so every run starts from the same
    /// bytes; see [`Volume::format_from`] to reuse one image).
    pub fn mkfs(&self) -> Result<(), String> {
        let p = mkfs_params(self.meta.size(), self.data.size());
        self.meta.with_offline(|meta| {
            self.data.with_offline(|data| {
                mkfs(meta, data, &p)
                    .map(|_| ())
                    .map_err(|e| format!("mkfs: {e}"))
            })
        })
    }

    /// Start from images made earlier (a cached mkfs).
    pub fn format_from(
        &self,
        meta: Rc<crate::sim::faultdev::PageMap>,
        data: Rc<crate::sim::faultdev::PageMap>,
    ) {
        self.meta.set_pages(meta);
        self.data.set_pages(data);
    }

    /// fsck of the durable contents (what a reboot would find).
    pub fn fsck(&self) -> Result<(), String> {
        let meta = self.meta.snapshot();
        let data = self.data.snapshot();
        let rep = crate::tools::fsck::fsck(&meta, Some(&data), &mut |_, _, _| {});
        if rep.is_clean() {
            return Ok(());
        }
        let mut s = String::new();
        let _ = rep.render(&mut s);
        Err(s)
    }
}

/// The mkfs parameters of every simulated volume.
pub fn mkfs_params(meta_bytes: u64, data_bytes: u64) -> MkfsParams {
    let mut qconf = QuorumConfig::default();
    parse_quorum_slot(&mut qconf, "0,10.0.2.15,7100").expect("quorum slot");
    MkfsParams {
        fmt_vers: 2,
        meta_bytes,
        data_bytes,
        qconf,
        fsid: 0x5c0f_5eed_0000_0001,
        uuid: uuid_from_random(0x5eed_5eed, 0xfeed_f00d),
        now: Timespec {
            sec: 1_700_000_000,
            nsec: 0,
        },
        data_alloc_zone_blocks: 0,
    }
}

/// Node options for the small simulated volumes: reserves and allocator
/// targets scaled down (as the fs tests do), no background tasks unless
/// asked for.
pub fn sim_node_options(mount: MountOptions, background: bool) -> NodeOptions {
    let mut o = NodeOptions {
        mount,
        ..Default::default()
    };
    if !background {
        o.tick_ns = 0;
        o.merge_poll_ns = 0;
    }
    o.server.commit.reserved_meta_blocks = 64;
    o.server.log_trees.reserved_meta_blocks = 64;
    o.server.log_trees.data_fill_lo = 1 << 14;
    o.server.log_trees.data_fill_target = 1 << 15;
    o.server.log_trees.data_fill_min = 256;
    o.trans.data_refill_thresh = 64;
    o.trans.cache_budget_bytes = 8 << 20;
    o.merge_cache_budget_bytes = 8 << 20;
    o
}

/// A mounted scoutfs node.
pub struct FsNode {
    pub node: NodeId,
    pub mount: Rc<Mount>,
    handle: RefCell<Option<Rc<NodeHandle>>>,
}

impl FsNode {
    /// The server address of `node` on the simulated network.
    pub fn server_addr(node: NodeId) -> String {
        format!("n{node}:7100")
    }

    /// Boot `node` and mount its volume (the first two attached disks):
    /// recovery of whatever a previous life left runs here.
    pub async fn start(
        world: &Rc<World>,
        node: NodeId,
        opts: NodeOptions,
    ) -> Result<FsResult<Rc<FsNode>>, NodeDown> {
        FsNode::start_armed(world, node, opts, None).await
    }

    /// [`FsNode::start`] with a crash armed for the new life before the
    /// mount (a crash during recovery).
    pub async fn start_armed(
        world: &Rc<World>,
        node: NodeId,
        opts: NodeOptions,
        arm: Option<(CrashTrigger, Loss)>,
    ) -> Result<FsResult<Rc<FsNode>>, NodeDown> {
        let env = world.boot(node);
        if let Some((t, l)) = arm {
            world.arm_crash(node, t, l);
        }
        let meta: Rc<dyn BlockDev> = env.disks[0].clone();
        let data: Rc<dyn BlockDev> = env.disks[1].clone();
        let net = env.net.clone();
        let (clock, entropy, handle) = (env.clock.clone(), env.entropy.clone(), env.handle.clone());
        let r = world
            .on(node, async move {
                let addr = FsNode::server_addr(node);
                mount_volume_on(net, &addr, meta, data, clock, entropy, handle, opts).await
            })
            .await?;
        match r {
            Ok((mount, nh)) => {
                let fs = Rc::new(FsNode {
                    node,
                    mount,
                    handle: RefCell::new(Some(Rc::new(nh))),
                });
                world.install(node, fs.clone());
                Ok(Ok(fs))
            }
            Err(e) => Ok(Err(e)),
        }
    }

    /// The node composition (merge work, server role), while mounted.
    pub fn node_handle(&self) -> Option<Rc<NodeHandle>> {
        self.handle.borrow().clone()
    }

    /// Unmount cleanly: commit, farewell, stop the server. The node's
    /// software is then idle; stop the node with `Fault::Stop`.
    pub async fn unmount(self: Rc<Self>) -> FsResult<()> {
        let h = self.handle.borrow_mut().take().ok_or(Errno::EIO)?;
        match Rc::try_unwrap(h) {
            Ok(h) => h.unmount().await,
            Err(h) => {
                *self.handle.borrow_mut() = Some(h);
                Err(Errno::EBUSY)
            }
        }
    }

    /// Ask for merge work and do one piece (Ok(false): none).
    pub async fn merge_once(self: Rc<Self>) -> FsResult<bool> {
        let h = self.node_handle().ok_or(Errno::EIO)?;
        h.merge_once().await
    }

    /// Finalize the mount's tree at its next commit and start a merge.
    pub async fn start_merge(self: Rc<Self>) -> FsResult<()> {
        let h = self.node_handle().ok_or(Errno::EIO)?;
        h.start_merge().await
    }
}

impl Software for FsNode {
    fn teardown(&self) -> LocalFut<'static, ()> {
        let h = self.handle.borrow_mut().take();
        Box::pin(async move {
            // the world aborted the operations in flight first, so nothing
            // else holds the handle
            if let Some(Ok(h)) = h.map(Rc::try_unwrap) {
                h.abandon().await;
            }
        })
    }

    fn into_any(self: Rc<Self>) -> Rc<dyn Any> {
        self
    }
}
