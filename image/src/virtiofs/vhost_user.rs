//! The vhost-user side: the messages (parsed by the `vhost` crate's
//! `BackendReqHandler`) set up the guest memory and the queues' rings, kick
//! and call eventfds in `DeviceState`; `relay.rs` moves the requests.
//!
//! Features offered: VIRTIO_F_VERSION_1 and VHOST_USER_F_PROTOCOL_FEATURES;
//! protocol features MQ (QEMU's vhost-user-fs asks GET_QUEUE_NUM for its
//! 1 + N queues) and REPLY_ACK (the crate answers it). Indirect
//! descriptors (see virtqueue.rs); no event index, no dirty log, no config
//! space (QEMU's vhost-user-fs-pci serves the tag itself).

use super::guest_memory::{GuestMem, RegionDesc};
use super::relay::Relay;
use super::virtqueue::{Chain, SplitQueue, MAX_QUEUE_SIZE};
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::sync::Arc;
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    Error as VuError, GpuBackend, Result as VuResult, VhostUserBackendReqHandlerMut,
};
use vhost::VhostUserMemoryRegionBase;

/// The hiprio queue plus up to 16 request queues.
pub const MAX_QUEUES: usize = 17;

const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
pub const PROTOCOL_FEATURES_BIT: u64 = 1 << 30;

pub fn offered_features() -> u64 {
    VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | PROTOCOL_FEATURES_BIT
}

/// One queue's configuration and run state.
#[derive(Default)]
pub struct Vring {
    pub queue: SplitQueue,
    pub kick: Option<Arc<File>>,
    pub call: Option<File>,
    /// SET_VRING_ENABLE (rings start disabled once protocol features are on).
    pub enabled: bool,
    /// Started by SET_VRING_KICK, stopped by GET_VRING_BASE.
    pub started: bool,
    /// Bumped on every stop: replies for requests of an older generation
    /// are not written.
    pub generation: u64,
    /// The ring was found broken; nothing more is taken from it until the
    /// frontend sets it up again.
    pub broken: bool,
    /// Rings set (SET_VRING_ADDR) before they are validated at start.
    pub addrs_set: bool,
}

impl Vring {
    pub fn runnable(&self) -> bool {
        self.started && self.enabled && !self.broken && self.kick.is_some()
    }
}

/// What the frontend configured.
pub struct DeviceState {
    pub mem: Option<Arc<GuestMem>>,
    pub vrings: Vec<Vring>,
    pub acked_features: u64,
    pub protocol_features: u64,
    /// Requests sent to the appliance and not answered yet, by FUSE unique.
    pub pending: HashMap<u64, Pending>,
    /// The appliance connection's state.
    pub link: Link,
    /// Bumped at each new appliance connection (what was taken before it
    /// and not yet written went out with the replay).
    pub epoch: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    Up,
    /// Lost; requests are held until a new connection (or `Gone`).
    Reconnecting,
    /// Lost for good: requests are answered `ENOTCONN`.
    Gone,
}

/// A request the appliance has not answered yet.
pub struct Pending {
    pub queue: usize,
    pub generation: u64,
    pub chain: Chain,
}

impl DeviceState {
    pub fn new() -> Self {
        DeviceState {
            mem: None,
            vrings: (0..MAX_QUEUES).map(|_| Vring::default()).collect(),
            acked_features: 0,
            protocol_features: 0,
            pending: HashMap::new(),
            link: Link::Up,
            epoch: 0,
        }
    }
}

impl Default for DeviceState {
    fn default() -> Self {
        Self::new()
    }
}

fn bad(why: &'static str) -> VuError {
    VuError::InvalidOperation(why)
}

/// The `vhost` crate's handler: updates the state under the relay's lock
/// and wakes the relay when queues change.
pub struct Handler {
    pub relay: Arc<Relay>,
}

impl Handler {
    fn vring<R>(
        &self,
        index: u32,
        f: impl FnOnce(&mut DeviceState, usize) -> VuResult<R>,
    ) -> VuResult<R> {
        let i = index as usize;
        if i >= MAX_QUEUES {
            return Err(VuError::InvalidParam);
        }
        let mut st = self.relay.lock_state();
        let r = f(&mut st, i);
        drop(st);
        self.relay.wake();
        r
    }
}

impl VhostUserBackendReqHandlerMut for Handler {
    fn set_owner(&mut self) -> VuResult<()> {
        Ok(())
    }

    fn reset_owner(&mut self) -> VuResult<()> {
        self.relay.reset_queues();
        Ok(())
    }

    fn reset_device(&mut self) -> VuResult<()> {
        self.relay.reset_queues();
        Ok(())
    }

    fn get_features(&mut self) -> VuResult<u64> {
        Ok(offered_features())
    }

    fn set_features(&mut self, features: u64) -> VuResult<()> {
        if features & !offered_features() != 0 {
            return Err(bad("features not offered"));
        }
        let mut st = self.relay.lock_state();
        st.acked_features = features;
        // without protocol features rings are enabled from the start
        if features & PROTOCOL_FEATURES_BIT == 0 {
            for v in st.vrings.iter_mut() {
                v.enabled = true;
            }
        }
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> VuResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        let regions: Vec<RegionDesc> = ctx
            .iter()
            .map(|r| RegionDesc {
                guest_phys: r.guest_phys_addr,
                size: r.memory_size,
                user_addr: r.user_addr,
                mmap_offset: r.mmap_offset,
            })
            .collect();
        let mem = GuestMem::from_files(&regions, files).map_err(|e| {
            eprintln!("scoutvm virtiofs: SET_MEM_TABLE: {e}");
            bad("bad memory table")
        })?;
        self.relay.lock_state().mem = Some(Arc::new(mem));
        self.relay.wake();
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VuResult<()> {
        if num == 0 || num > u32::from(MAX_QUEUE_SIZE) || !num.is_power_of_two() {
            return Err(VuError::InvalidParam);
        }
        self.vring(index, |st, i| {
            st.vrings[i].queue.size = num as u16;
            Ok(())
        })
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VuResult<()> {
        if flags.contains(VhostUserVringAddrFlags::VHOST_VRING_F_LOG) {
            return Err(bad("dirty logging not offered"));
        }
        self.vring(index, |st, i| {
            let mem = st
                .mem
                .clone()
                .ok_or(bad("vring address before the memory table"))?;
            let tr = |a| {
                mem.user_to_guest(a).map_err(|e| {
                    eprintln!("scoutvm virtiofs: SET_VRING_ADDR {i}: {e}");
                    bad("vring address outside guest memory")
                })
            };
            let q = &mut st.vrings[i].queue;
            q.desc = tr(descriptor)?;
            q.avail = tr(available)?;
            q.used = tr(used)?;
            st.vrings[i].addrs_set = true;
            Ok(())
        })
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VuResult<()> {
        let base = u16::try_from(base).map_err(|_| VuError::InvalidParam)?;
        self.vring(index, |st, i| {
            st.vrings[i].queue.next_avail = base;
            st.vrings[i].queue.next_used = base;
            Ok(())
        })
    }

    fn get_vring_base(&mut self, index: u32) -> VuResult<VhostUserVringState> {
        self.vring(index, |st, i| {
            let v = &mut st.vrings[i];
            v.started = false;
            v.kick = None;
            v.generation += 1;
            Ok(VhostUserVringState::new(
                index,
                u32::from(v.queue.next_avail),
            ))
        })
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        self.vring(u32::from(index), |st, i| {
            let mem = st.mem.clone();
            let indirect = st.acked_features & VIRTIO_RING_F_INDIRECT_DESC != 0;
            let v = &mut st.vrings[i];
            v.queue.indirect = indirect;
            v.kick = fd.map(Arc::new);
            v.broken = false;
            v.started = false;
            let Some(mem) = mem else {
                return Err(bad("vring kick before the memory table"));
            };
            if !v.addrs_set {
                return Err(bad("vring kick before its addresses"));
            }
            if let Err(e) = v.queue.validate(&mem) {
                eprintln!("scoutvm virtiofs: queue {i}: {e}");
                return Err(bad("vring outside guest memory"));
            }
            // the used index the driver last saw (0 on a fresh ring)
            v.queue.next_used = mem
                .load_u16_acquire(v.queue.used + 2)
                .map_err(|_| bad("used ring unreadable"))?;
            v.started = true;
            Ok(())
        })
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        self.vring(u32::from(index), |st, i| {
            st.vrings[i].call = fd;
            Ok(())
        })
    }

    fn set_vring_err(&mut self, _index: u8, _fd: Option<File>) -> VuResult<()> {
        Ok(())
    }

    fn get_protocol_features(&mut self) -> VuResult<VhostUserProtocolFeatures> {
        Ok(VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK)
    }

    fn set_protocol_features(&mut self, features: u64) -> VuResult<()> {
        let offered = (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK).bits();
        if features & !offered != 0 {
            return Err(bad("protocol features not offered"));
        }
        self.relay.lock_state().protocol_features = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> VuResult<u64> {
        Ok(MAX_QUEUES as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VuResult<()> {
        self.vring(index, |st, i| {
            st.vrings[i].enabled = enable;
            Ok(())
        })
    }

    fn get_config(&mut self, _o: u32, _s: u32, _f: VhostUserConfigFlags) -> VuResult<Vec<u8>> {
        Err(unsupported("config space"))
    }

    fn set_config(&mut self, _o: u32, _b: &[u8], _f: VhostUserConfigFlags) -> VuResult<()> {
        Err(unsupported("config space"))
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> VuResult<()> {
        Err(unsupported("gpu socket"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VuResult<File> {
        Err(unsupported("shared objects"))
    }

    fn get_inflight_fd(&mut self, _i: &VhostUserInflight) -> VuResult<(VhostUserInflight, File)> {
        Err(unsupported("inflight tracking"))
    }

    fn set_inflight_fd(&mut self, _i: &VhostUserInflight, _file: File) -> VuResult<()> {
        Err(unsupported("inflight tracking"))
    }

    fn get_max_mem_slots(&mut self) -> VuResult<u64> {
        Err(unsupported("memory slots"))
    }

    fn add_mem_region(
        &mut self,
        _region: &VhostUserSingleMemoryRegion,
        _fd: File,
        _postcopy_listening: Option<bool>,
    ) -> VuResult<Option<VhostUserMemoryRegionBase>> {
        Err(unsupported("memory slots"))
    }

    fn remove_mem_region(&mut self, _region: &VhostUserSingleMemoryRegion) -> VuResult<()> {
        Err(unsupported("memory slots"))
    }

    fn set_device_state_fd(
        &mut self,
        _d: VhostTransferStateDirection,
        _p: VhostTransferStatePhase,
        _fd: File,
    ) -> VuResult<Option<File>> {
        Err(unsupported("device state transfer"))
    }

    fn check_device_state(&mut self) -> VuResult<()> {
        Err(unsupported("device state transfer"))
    }

    fn get_shmem_config(&mut self) -> VuResult<VhostUserShMemConfig> {
        Err(unsupported("shared memory regions"))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> VuResult<()> {
        Err(unsupported("dirty logging"))
    }
}

fn unsupported(what: &str) -> VuError {
    VuError::ReqHandlerError(io::Error::new(
        io::ErrorKind::Unsupported,
        format!("not offered: {what}"),
    ))
}
