//! The boot service "volume": mount the node's volume, serve it over 9P,
//! and take both down for power off.
//!
//! It sits above [`crate::volume`] (finding devices, mounting) and
//! [`crate::p9svc`] (the 9P listener) so that neither of them knows the
//! other. Called by the boot services, the shell's `mount` and `poweroff`.
//!
//! Cluster mode (`quorum_slot_nr=`, `cluster=1`, see `cmdline::ClusterMode`)
//! is decided here: such a node must not mount the shared volume on its
//! own (two nodes serving one volume corrupt it), so it boots without it,
//! "waiting for quorum"; the quorum agent mounts it once elected.

use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;

use scoutvm_fs::runtime::exec::Handle;
use scoutvm_kernel::cmdline::ClusterMode;

use crate::volume::{self, Volume};

/// Why a cluster node does not mount by itself, or `None` on a single node.
pub fn cluster_refusal() -> Option<String> {
    match &crate::runtime::config().cluster {
        ClusterMode::Off => None,
        ClusterMode::On(_) => Some(
            "cluster mode: the shared volume is mounted through the quorum, \
             not on its own (waiting for quorum)"
                .into(),
        ),
        ClusterMode::Invalid(why) => Some(format!("cluster settings invalid: {why}")),
    }
}

/// Mount whatever this node is configured for and start serving it. In
/// cluster mode this refuses (see [`cluster_refusal`]).
pub async fn mount_and_serve() -> Result<Rc<Volume>, String> {
    if let Some(v) = volume::current() {
        return Ok(v);
    }
    if let Some(why) = cluster_refusal() {
        return Err(why);
    }
    let v = volume::mount().await?;
    crate::p9svc::start(&v)?;
    Ok(v)
}

/// Boot: mount in the background so the shell comes up at once; say why
/// if there is nothing to mount.
pub fn start(h: &Handle) -> Result<(), String> {
    if let Some(why) = cluster_refusal() {
        log::info!("volume: {why}");
        volume::note_unmounted(why);
        return Ok(());
    }
    let step = crate::boot_steps::BootStep::begin();
    h.spawn_named("volume.mount", async move {
        if let Err(e) = mount_and_serve().await {
            log::warn!("volume: {e}");
        }
        drop(step);
    })
    .map(|_| ())
    .map_err(|e| format!("{e}"))
}

/// Take the volume down for power off: stop 9P first (connections release
/// their fids, nothing changes after it), then the final commit. Safe to
/// call when nothing is mounted.
pub async fn shutdown() -> Result<(), String> {
    let Some(v) = volume::take_for_poweroff() else {
        return Ok(());
    };
    let p9 = v.p9.borrow_mut().take();
    if let Some(server) = p9 {
        crate::p9svc::stop(&server).await;
    }
    volume::unmount(&v).await
}
