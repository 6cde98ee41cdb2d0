//! The node's volume: find the metadata and data devices, mount the
//! filesystem on them at boot, serve it over 9P, and take it down cleanly
//! on `poweroff`.
//!
//! Owns the one mounted [`Volume`] (a `posix::mount::Mount` plus what keeps it
//! alive) and the boot-time status the shell reports when there is none.
//! Devices come from `meta=`/`data=` on the command line, else from the
//! super blocks (the metadata device carries `IS_META_BDEV`, the data
//! device the same fsid without it), else from the disk serials
//! `meta`/`data`. `volume=ram[:MIB]` serves an in-memory volume instead
//! (lost at power off; for tests and benchmarks of the front end).
//! Invariants: at most one volume is mounted; [`shutdown`] stops the 9P
//! server before the final commit, so nothing changes after it.

use alloc::format;
use alloc::rc::Rc;
use alloc::string::{String, ToString};
use core::cell::RefCell;

use scoutvm_fs::client::cluster_node::{
    mount_cluster, ClusterNode, ClusterSlot, OwnSlotFence, SoloDatagrams,
};
use scoutvm_fs::client::node::{self, NodeHandle, NodeOptions};
use scoutvm_fs::cluster::auth;
use scoutvm_fs::cluster::fence::{FenceAgent, ManualFence};
use scoutvm_fs::cluster::host_fence::HostFence;
use scoutvm_fs::cluster::lock::{LockMode, LockRange};
use scoutvm_fs::cluster::quorum::HB_TIMEOUT_MIN_NS;
use scoutvm_fs::cluster::quorum_agent::QuorumStatus;
use scoutvm_fs::cluster::transport::{Datagrams, MemNet, Transport};
use scoutvm_fs::format::super_block::QuorumConfig;
use scoutvm_fs::format::super_block::FLAG_IS_META_BDEV;
use scoutvm_fs::format::FORMAT_VERSION_MAX;
use scoutvm_fs::posix::mount::Mount;
use scoutvm_fs::runtime::env::{Clock, Entropy};
use scoutvm_fs::runtime::trace::Tracepoint;
use scoutvm_fs::storage::block::read_super_from;
use scoutvm_fs::storage::dev::{BlockDev, IoError, MemDev};
use scoutvm_fs::tools::mkfs::{self, MkfsParams};
use scoutvm_net::p9::Server;

use crate::devices::{self, BlockEntry};
use crate::platform::{KernelClock, KernelEntropy};
use crate::runtime::{self, Local};
use scoutvm_kernel::cmdline::ClusterMode;

static VOLUME_EVENT: Tracepoint = Tracepoint::new("volume", &["event", "errno"]);
const EV_MOUNTED: u64 = 1;
const EV_MOUNT_FAILED: u64 = 2;
const EV_UNMOUNTED: u64 = 3;
const EV_NO_VOLUME: u64 = 4;

/// Most MiB a RAM volume may have.
pub const RAM_VOLUME_MAX_MIB: u64 = 16 * 1024;
/// Smallest metadata RAM disk. The server keeps about 34 700 blocks
/// (2.2 GiB) of metadata in reserve, so the device must be well past that;
/// it is sparse, so only the blocks written cost memory.
const RAM_VOLUME_MIN_META_BYTES: u64 = 8 << 30;

/// A `&'static` disk as the `Rc<dyn BlockDev>` the filesystem holds.
pub struct Disk(pub &'static scoutvm_drivers::blk::VirtioBlk);

impl BlockDev for Disk {
    fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.0.read(off, buf)
    }
    fn write(&self, off: u64, buf: &[u8]) -> Result<(), IoError> {
        self.0.write(off, buf)
    }
    fn flush(&self) -> Result<(), IoError> {
        self.0.flush()
    }
    fn size_bytes(&self) -> u64 {
        self.0.size_bytes()
    }
}

/// Where the mounted volume lives.
pub enum Kind {
    /// On two RAM disks (`volume=ram`), formatted at boot.
    Ram {
        mib: u64,
        meta: Rc<dyn BlockDev>,
        data: Rc<dyn BlockDev>,
    },
    /// On the node's disks.
    Disk {
        meta: &'static BlockEntry,
        data: &'static BlockEntry,
    },
}

/// The mounted volume.
pub struct Volume {
    pub mount: Rc<Mount>,
    pub kind: Kind,
    /// The server role and client under a disk volume.
    node: RefCell<Option<Node>>,
    /// The 9P server once it listens.
    pub p9: RefCell<Option<Rc<Server>>>,
    /// The FUSE server, once `fusesvc` listens.
    pub fuse: RefCell<Option<Rc<scoutvm_net::fuse::Server>>>,
}

impl Volume {
    /// "vda (meta) + vdb (data)" or "RAM (N MiB)".
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Ram { mib, .. } => format!("in memory ({mib} MiB, lost at power off)"),
            Kind::Disk { meta, data } => format!("{} (meta) + {} (data)", meta.name, data.name),
        }
    }
}

/// What keeps a mount alive: a private node (the RAM volume) or a node
/// of the volume's quorum (disk volumes).
enum Node {
    Single(NodeHandle),
    Cluster(ClusterNode),
}

enum State {
    /// Boot has not looked yet.
    Idle,
    Mounted(Rc<Volume>),
    /// Why there is no volume (shown by the shell).
    Unmounted(String),
    /// `poweroff` took it down.
    Down,
}

static STATE: Local<RefCell<State>> = Local::new(RefCell::new(State::Idle));

/// The fence agent of a cluster member: the shell's `fence` lists and
/// acks what it waits for.
static FENCE: Local<RefCell<Option<Rc<ManualFence>>>> = Local::new(RefCell::new(None));

/// The manual fence agent, once this node joined a cluster.
pub fn fence_agent() -> Option<Rc<ManualFence>> {
    FENCE.borrow().clone()
}

impl Volume {
    /// The quorum agent's state, on a node holding a quorum slot.
    pub fn quorum_status(&self) -> Option<QuorumStatus> {
        match &*self.node.borrow() {
            Some(Node::Cluster(n)) => n.quorum_status(),
            _ => None,
        }
    }

    /// The rids of the mounts connected to this node's server (cluster
    /// nodes, while this node leads) and this node's own rid.
    pub fn cluster_clients(&self) -> Option<(u64, alloc::vec::Vec<u64>)> {
        match &*self.node.borrow() {
            Some(Node::Cluster(n)) => Some((
                n.client().rid(),
                n.server().map(|s| s.client_rids()).unwrap_or_default(),
            )),
            _ => None,
        }
    }
}

impl Volume {
    /// This cluster mount's lock client and, while this node leads, every
    /// grant its lock server records (rid, range, mode).
    #[allow(clippy::type_complexity)]
    pub fn cluster_locks(
        &self,
    ) -> Option<(
        Option<Rc<scoutvm_fs::cluster::lock_client::LockClient>>,
        Option<alloc::vec::Vec<(u64, LockRange, LockMode)>>,
    )> {
        match &*self.node.borrow() {
            Some(Node::Cluster(n)) => Some((
                n.lock_client().cloned(),
                n.server().map(|s| s.lock_grants()),
            )),
            _ => None,
        }
    }

    /// The server role this node runs while it leads (None on a single
    /// node or a follower).
    pub fn cluster_server(&self) -> Option<scoutvm_fs::server::role::ServerRole> {
        match &*self.node.borrow() {
            Some(Node::Cluster(n)) => n.server(),
            _ => None,
        }
    }

    /// This cluster mount's session client (None on a single node).
    pub fn cluster_client(&self) -> Option<Rc<scoutvm_fs::client::requests::Client>> {
        match &*self.node.borrow() {
            Some(Node::Cluster(n)) => Some(n.client().clone()),
            _ => None,
        }
    }
}

/// The mounted volume, if any.
pub fn current() -> Option<Rc<Volume>> {
    match &*STATE.borrow() {
        State::Mounted(v) => Some(v.clone()),
        _ => None,
    }
}

/// The mounted volume or a one-line reason why there is none.
pub fn require() -> Result<Rc<Volume>, String> {
    match &*STATE.borrow() {
        State::Mounted(v) => Ok(v.clone()),
        State::Unmounted(why) => Err(format!("no volume mounted: {why}")),
        State::Idle => Err("no volume mounted yet".to_string()),
        State::Down => Err("the volume was unmounted for power off".to_string()),
    }
}

/// Record why no volume is mounted (the shell shows it), unless one is.
pub fn note_unmounted(why: String) {
    let mut st = STATE.borrow_mut();
    if !matches!(*st, State::Mounted(_)) {
        *st = State::Unmounted(why);
    }
}

/// The metadata and data disks of this node.
pub fn find_devices() -> Result<(&'static BlockEntry, &'static BlockEntry), String> {
    let cmd = runtime::cmdline();
    let named = |role: &str| -> Result<Option<&'static BlockEntry>, String> {
        match cmd.get(role) {
            Some(name) => devices::block(name)
                .map(Some)
                .ok_or_else(|| format!("{role}={name}: no such disk (see 'devices')")),
            None => Ok(None),
        }
    };
    let mut meta = named("meta")?;
    let mut data = named("data")?;
    if meta.is_none() {
        let supers: alloc::vec::Vec<&'static BlockEntry> = devices::blocks()
            .iter()
            .filter(|b| Some(b.name.as_str()) != data.map(|d| d.name.as_str()))
            .filter(|b| read_super_from(b.dev).is_ok_and(|sb| sb.flags & FLAG_IS_META_BDEV != 0))
            .collect();
        match supers.as_slice() {
            [one] => meta = Some(one),
            [] => {}
            _ => {
                return Err("several disks hold a metadata super block; name one with meta=".into())
            }
        }
    }
    if data.is_none() {
        if let Some(m) = meta {
            if let Ok(msb) = read_super_from(m.dev) {
                data = devices::blocks().iter().find(|b| {
                    b.name != m.name
                        && read_super_from(b.dev).is_ok_and(|sb| {
                            sb.flags & FLAG_IS_META_BDEV == 0 && sb.hdr.fsid == msb.hdr.fsid
                        })
                });
            }
        }
    }
    let meta = meta
        .or_else(|| devices::blocks().iter().find(|b| b.dev.serial() == "meta"))
        .ok_or("no metadata disk (give meta=DISK or a disk with serial 'meta')")?;
    let data = data
        .or_else(|| devices::blocks().iter().find(|b| b.dev.serial() == "data"))
        .ok_or("no data disk (give data=DISK or a disk with serial 'data')")?;
    if meta.name == data.name {
        return Err(format!("meta and data are the same disk ({})", meta.name));
    }
    for (role, b) in [("meta", meta), ("data", data)] {
        if let Some(table) = devices::partition_table(b) {
            return Err(format!(
                "{role} disk {} holds a {table} partition table (the boot disk?): \
                 a volume device is a whole disk; name others with meta=/data=",
                b.name
            ));
        }
    }
    Ok((meta, data))
}

fn ram_mib() -> Result<Option<u64>, String> {
    match runtime::cmdline().get("volume") {
        None | Some("disk") => Ok(None),
        Some("ram") => Ok(Some(1024)),
        Some(v) => match v.strip_prefix("ram:").map(|m| m.parse::<u64>()) {
            Some(Ok(m)) if (16..=RAM_VOLUME_MAX_MIB).contains(&m) => Ok(Some(m)),
            _ => Err(format!(
                "volume={v}: expected disk, ram or ram:MIB (16..={RAM_VOLUME_MAX_MIB})"
            )),
        },
    }
}

async fn mount_ram(mib: u64) -> Result<Volume, String> {
    // Two sparse RAM disks formatted by the real mkfs and mounted through
    // the real backend (server role, client, log trees): the RAM volume
    // exercises the same code as a disk volume, only the devices differ.
    let data_bytes = mib << 20;
    let meta_bytes = (data_bytes / 8).max(RAM_VOLUME_MIN_META_BYTES);
    let meta: Rc<dyn BlockDev> = Rc::new(MemDev::new(meta_bytes));
    let data: Rc<dyn BlockDev> = Rc::new(MemDev::new(data_bytes));
    let entropy = KernelEntropy::new();
    let mut qconf = QuorumConfig::default();
    mkfs::parse_quorum_slot(&mut qconf, "0,127.0.0.1,7100")?;
    let params = MkfsParams {
        fmt_vers: FORMAT_VERSION_MAX,
        meta_bytes,
        data_bytes,
        qconf,
        fsid: entropy.next_u64(),
        uuid: mkfs::uuid_from_random(entropy.next_u64(), entropy.next_u64()),
        now: KernelClock.wall(),
        data_alloc_zone_blocks: 0,
    };
    mkfs::mkfs(&*meta, &*data, &params)
        .map_err(|e| format!("mkfs of the RAM volume failed: {e}"))?;
    let (mount, node) = node::mount_volume(
        meta.clone(),
        data.clone(),
        Rc::new(KernelClock),
        Rc::new(entropy),
        runtime::handle(),
        NodeOptions::default(),
    )
    .await
    .map_err(|e| {
        format!(
            "mount of the RAM volume failed: {} ({})",
            e.text(),
            e.name()
        )
    })?;
    Ok(Volume {
        mount,
        kind: Kind::Ram { mib, meta, data },
        node: RefCell::new(Some(Node::Single(node))),
        p9: RefCell::new(None),
        fuse: RefCell::new(None),
    })
}

async fn mount_disks() -> Result<Volume, String> {
    let (meta, data) = find_devices()?;
    let has = |b: &BlockEntry| read_super_from(b.dev).is_ok();
    if !has(meta) || !has(data) {
        VOLUME_EVENT.emit(&[EV_NO_VOLUME, 0]);
        return Err(format!(
            "no scoutfs volume on {} (meta) and {} (data); make one with 'mkfs -A -Q 0,ADDR,PORT'",
            meta.name, data.name
        ));
    }
    mount_disk_volume(meta, data).await
}

/// Mount whatever this node is configured for (once; later calls return
/// the mounted volume). Serving it is the volume service's job.
pub async fn mount() -> Result<Rc<Volume>, String> {
    if let Some(v) = current() {
        return Ok(v);
    }
    let r = match ram_mib()? {
        Some(mib) => mount_ram(mib).await,
        None => mount_disks().await,
    };
    let v = match r {
        Ok(v) => Rc::new(v),
        Err(e) => {
            VOLUME_EVENT.emit(&[EV_MOUNT_FAILED, 0]);
            *STATE.borrow_mut() = State::Unmounted(e.clone());
            return Err(e);
        }
    };
    VOLUME_EVENT.emit(&[EV_MOUNTED, 0]);
    log::info!("volume: mounted {}", v.describe());
    *STATE.borrow_mut() = State::Mounted(v.clone());
    Ok(v)
}

/// Take the mounted volume for power off: from now on there is none. The
/// caller stops its front ends, then calls [`unmount`].
pub fn take_for_poweroff() -> Option<Rc<Volume>> {
    match core::mem::replace(&mut *STATE.borrow_mut(), State::Down) {
        State::Mounted(v) => Some(v),
        _ => None,
    }
}

/// Final commit and unmount of a volume taken with [`take_for_poweroff`]:
/// the volume is at rest afterwards.
pub async fn unmount(v: &Volume) -> Result<(), String> {
    let r = unmount_volume(v).await;
    VOLUME_EVENT.emit(&[EV_UNMOUNTED, r.is_err() as u64]);
    r
}

/// Mount the volume on `meta`/`data` through its quorum: a volume with a
/// single quorum slot and no cluster words on the command line makes this
/// node slot 0 (it elects itself; its own crashed earlier life is the only
/// predecessor it can find and it acks that fence itself, see
/// `OwnSlotFence`). The node's server and its mount talk in memory.
async fn mount_disk_volume(
    meta: &'static BlockEntry,
    data: &'static BlockEntry,
) -> Result<Volume, String> {
    let sb = read_super_from(meta.dev)
        .map_err(|e| format!("cannot read the super block of {}: {e}", meta.name))?;
    let slots: alloc::vec::Vec<_> = sb.qconf.configured().collect();
    let failed = |e: scoutvm_fs::errno::Errno| {
        format!(
            "mounting the volume on {} + {} failed: {} ({})",
            meta.name,
            data.name,
            e.text(),
            e.name()
        )
    };
    let (mount, node) = if let [(0, addr)] = slots[..] {
        let addr = format!("{addr}");
        log::info!(
            "volume: the volume has one quorum slot ({addr}) and the command line names none: this node is slot 0"
        );
        let fence: Rc<dyn FenceAgent> = Rc::new(OwnSlotFence::new(&addr, ManualFence::new()));
        let net: Rc<dyn Transport> = Rc::new(MemNet::new());
        let (m, n) = mount_cluster(
            Rc::new(Disk(meta.dev)),
            Rc::new(Disk(data.dev)),
            net,
            Some(ClusterSlot {
                slot: 0,
                sock: Rc::new(SoloDatagrams),
                hb_timeout_ns: HB_TIMEOUT_MIN_NS,
            }),
            fence,
            Rc::new(KernelClock),
            Rc::new(KernelEntropy::new()),
            runtime::handle(),
            // its server listens on this node's memory only, so no other
            // mount can ever ask it for a lock: grant them locally
            NodeOptions {
                cluster_locks: None,
                ..NodeOptions::default()
            },
        )
        .await
        .map_err(failed)?;
        (m, Node::Cluster(n))
    } else {
        log::warn!(
            "volume: the volume has {} quorum slots but no cluster words were given: mounting it alone",
            slots.len()
        );
        let (m, n) = node::mount_volume(
            Rc::new(Disk(meta.dev)),
            Rc::new(Disk(data.dev)),
            Rc::new(KernelClock),
            Rc::new(KernelEntropy::new()),
            runtime::handle(),
            NodeOptions::default(),
        )
        .await
        .map_err(failed)?;
        (m, Node::Single(n))
    };
    Ok(Volume {
        mount,
        kind: Kind::Disk { meta, data },
        node: RefCell::new(Some(node)),
        p9: RefCell::new(None),
        fuse: RefCell::new(None),
    })
}

/// Binding the quorum socket is retried this often, this many times (a
/// card configured by DHCP gets its address after the volume starts).
const BIND_RETRY_NS: u64 = 500_000_000;
const BIND_TRIES: u32 = 120;

/// Makes the quorum slot's datagram socket at `"a.b.c.d:port"`.
pub type BindDatagrams = dyn Fn(&str) -> Result<Rc<dyn Datagrams>, String>;

/// Join the cluster of the volume on this node's disks (cluster mode):
/// `slot` is our quorum slot (its datagram socket made by `bind` at the
/// slot's address), `net` the cluster transport. Waits until a leader
/// serves (a node without quorum waits, and never writes).
pub async fn mount_cluster_member(
    slot: Option<u8>,
    hb_timeout_ns: u64,
    net: Rc<dyn Transport>,
    bind: &BindDatagrams,
) -> Result<Rc<Volume>, String> {
    if let Some(v) = current() {
        return Ok(v);
    }
    let r = join(slot, hb_timeout_ns, net, bind).await;
    let v = match r {
        Ok(v) => Rc::new(v),
        Err(e) => {
            VOLUME_EVENT.emit(&[EV_MOUNT_FAILED, 0]);
            *STATE.borrow_mut() = State::Unmounted(e.clone());
            return Err(e);
        }
    };
    VOLUME_EVENT.emit(&[EV_MOUNTED, 0]);
    // the rid on the console: a host fence agent maps rids to machines
    // by this line (docs/cluster.md)
    let rid = v.cluster_clients().map(|(rid, _)| rid).unwrap_or(0);
    log::info!(
        "volume: mounted {} through the cluster as rid {rid:016x}",
        v.describe()
    );
    *STATE.borrow_mut() = State::Mounted(v.clone());
    Ok(v)
}

async fn join(
    slot: Option<u8>,
    hb_timeout_ns: u64,
    net: Rc<dyn Transport>,
    bind: &BindDatagrams,
) -> Result<Volume, String> {
    let (meta, data) = find_devices()?;
    let refuse = |why: String| format!("not joining the cluster: {why}");
    let ms = read_super_from(meta.dev)
        .map_err(|e| refuse(format!("no usable volume on {} (meta): {e}", meta.name)))?;
    let ds = read_super_from(data.dev)
        .map_err(|e| refuse(format!("no usable volume on {} (data): {e}", data.name)))?;
    if ms.flags & FLAG_IS_META_BDEV == 0 || ds.hdr.fsid != ms.hdr.fsid {
        return Err(refuse(format!(
            "{} and {} are not the meta and data devices of one volume (fsid {:016x} / {:016x})",
            meta.name, data.name, ms.hdr.fsid, ds.hdr.fsid
        )));
    }
    set_cluster_key(ms.hdr.fsid, ms.qconf.configured().count()).map_err(refuse)?;
    let cslot = match slot {
        Some(s) => {
            let Some((_, a)) = ms.qconf.configured().find(|(i, _)| *i == s as usize) else {
                return Err(refuse(format!(
                    "quorum slot {s} is not configured on this volume"
                )));
            };
            let addr = format!("{a}");
            // the card may still be waiting for its (DHCP) address
            let mut tries = 0u32;
            let sock = loop {
                match bind(&addr) {
                    Ok(s) => break s,
                    Err(e) if tries >= BIND_TRIES => {
                        return Err(refuse(format!("quorum socket {addr}: {e}")));
                    }
                    Err(e) => {
                        if tries == 0 {
                            log::info!(
                                "volume: quorum socket {addr}: {e}; waiting for the address"
                            );
                        }
                        tries += 1;
                        runtime::handle().sleep_ns(BIND_RETRY_NS).await;
                    }
                }
            };
            log::info!("volume: joining as quorum slot {s} at {addr}");
            Some(ClusterSlot {
                slot: s,
                sock,
                hb_timeout_ns,
            })
        }
        None => {
            log::info!("volume: joining as a client-only node");
            None
        }
    };
    note_unmounted("waiting for a quorum leader".into());
    let manual = ManualFence::new();
    *FENCE.borrow_mut() = Some(manual.clone());
    let fence: Rc<dyn FenceAgent> = match fence_agent_addr() {
        Some(agent) => {
            log::info!("volume: fence requests go to the host agent at {agent} (and the shell)");
            Rc::new(HostFence::new(
                &agent,
                net.clone(),
                manual,
                runtime::handle(),
            ))
        }
        None => manual,
    };
    let (mount, node) = mount_cluster(
        Rc::new(Disk(meta.dev)),
        Rc::new(Disk(data.dev)),
        net,
        cslot,
        fence,
        Rc::new(KernelClock),
        Rc::new(KernelEntropy::new()),
        runtime::handle(),
        // every cluster mount takes its locks from the leader's lock
        // server (NodeOptions' default), so what one node commits the
        // others read
        cluster_node_options(),
    )
    .await
    .map_err(|e| format!("joining the cluster failed: {} ({})", e.text(), e.name()))?;
    Ok(Volume {
        mount,
        kind: Kind::Disk { meta, data },
        node: RefCell::new(Some(Node::Cluster(node))),
        p9: RefCell::new(None),
        fuse: RefCell::new(None),
    })
}

/// A cluster member's node options: `orphan_scan_delay_ms=` and
/// `log_merge.finalize_height=`, or their defaults.
fn cluster_node_options() -> NodeOptions {
    let mut o = NodeOptions::default();
    if let ClusterMode::On(c) = &runtime::config().cluster {
        o.orphan_scan_delay_ms = c.orphan_scan_delay_ms as u64;
        if let Some(h) = c.finalize_height {
            o.server.finalize_height = h;
        }
    }
    o
}

/// `fence.agent=IP:PORT`, if given.
fn fence_agent_addr() -> Option<String> {
    match &runtime::config().cluster {
        ClusterMode::On(c) => c.fence_agent.clone(),
        _ => None,
    }
}

/// Give the cluster layer this node's key (`cluster.key=`) for volume
/// `fsid`, or refuse an unauthenticated quorum of several `slots` unless
/// `cluster.insecure=1` says so.
fn set_cluster_key(fsid: u64, slots: usize) -> Result<(), String> {
    let (key, insecure) = match &runtime::config().cluster {
        ClusterMode::On(c) => (c.key.clone(), c.insecure),
        _ => (None, false),
    };
    let e = KernelEntropy::new();
    let mut seed = [0u8; 32];
    for c in seed.chunks_exact_mut(8) {
        c.copy_from_slice(&e.next_u64().to_le_bytes());
    }
    match key {
        Some(k) => {
            auth::configure(Some(&k), fsid, seed);
            log::info!("cluster: traffic authenticated with the cluster key");
        }
        None if slots > 1 && !insecure => {
            return Err(format!(
                "the volume has {slots} quorum slots and no cluster.key= was given \
                 (cluster.insecure=1 allows an unauthenticated cluster)"
            ));
        }
        None => {
            auth::configure(None, fsid, seed);
            log::warn!("cluster: no cluster.key=: cluster traffic is unauthenticated");
        }
    }
    Ok(())
}

/// Final commit and unmount: the volume is at rest afterwards.
async fn unmount_volume(v: &Volume) -> Result<(), String> {
    let node = v.node.borrow_mut().take();
    let r = match node {
        Some(Node::Single(node)) => node.unmount().await,
        Some(Node::Cluster(node)) => node.unmount().await,
        None => {
            return v
                .mount
                .sync()
                .await
                .map_err(|e| format!("final commit failed: {}", e.name()))
        }
    };
    r.map_err(|e| format!("unmount failed: {} ({})", e.text(), e.name()))
}
