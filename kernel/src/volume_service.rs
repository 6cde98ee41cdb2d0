//! The boot service "volume": mount the node's volume, serve it over 9P
//! and the admin API, and take them down for power off.
//!
//! It sits above [`crate::volume`] (finding devices, mounting) and
//! [`crate::p9svc`] (the 9P listener) and [`crate::apisvc`] (the admin
//! API) so that none of them knows the
//! others. Called by the boot services, the shell's `mount` and `poweroff`.
//!
//! Cluster mode (`quorum_slot_nr=`, `cluster=1`, see `cmdline::ClusterMode`)
//! is decided here: such a node joins the volume's cluster
//! (`volume::mount_cluster_member` over the cluster cards' transports): its
//! quorum agent runs the server while this node leads, and the mount waits
//! for a leader. Invalid cluster words keep the node out of the volume.

use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;

use scoutvm_fs::runtime::exec::Handle;
use scoutvm_kernel::cmdline::ClusterMode;

use crate::cluster_net::{SmolDatagrams, SmolTransport};
use crate::volume::{self, Volume};
use scoutvm_fs::cluster::transport::Datagrams;

/// Why this node does not mount at all (invalid cluster words), or `None`.
pub fn cluster_refusal() -> Option<String> {
    match &crate::runtime::config().cluster {
        ClusterMode::Off => None,
        ClusterMode::On(_) => None,
        ClusterMode::Invalid(why) => Some(format!("cluster settings invalid: {why}")),
    }
}

/// Mount whatever this node is configured for (in cluster mode: join the
/// cluster) and start serving it.
pub async fn mount_and_serve() -> Result<Rc<Volume>, String> {
    if let Some(v) = volume::current() {
        return Ok(v);
    }
    if let Some(why) = cluster_refusal() {
        return Err(why);
    }
    let v = match &crate::runtime::config().cluster {
        ClusterMode::On(c) => {
            let bind = |a: &str| -> Result<Rc<dyn Datagrams>, String> {
                SmolDatagrams::bind(a)
                    .map(|d| Rc::new(d) as Rc<dyn Datagrams>)
                    .map_err(|e| format!("{e:?}"))
            };
            volume::mount_cluster_member(
                c.quorum_slot_nr,
                u64::from(c.heartbeat_timeout_ms) * 1_000_000,
                Rc::new(SmolTransport::default()),
                &bind,
            )
            .await?
        }
        _ => volume::mount().await?,
    };
    crate::p9svc::start(&v)?;
    // a bad fuse.* word leaves the volume served over 9P
    if let Err(e) = crate::fusesvc::start(&v) {
        log::error!("{e}; the FUSE service is off");
    }
    // a bad api.* word leaves the volume served over 9P
    if let Err(e) = crate::apisvc::start(&v) {
        log::error!("{e}; the admin API is off");
    }
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
    // a cluster member may wait for a leader for ever: not a boot step
    let step = matches!(crate::runtime::config().cluster, ClusterMode::Off)
        .then(crate::boot_steps::BootStep::begin);
    h.spawn_named("volume.mount", async move {
        if let Err(e) = mount_and_serve().await {
            log::warn!("volume: {e}");
        }
        drop(step);
    })
    .map(|_| ())
    .map_err(|e| format!("{e}"))
}

/// Take the volume down for power off: stop the admin API and 9P first (connections release
/// their fids, nothing changes after it), then the final commit. Safe to
/// call when nothing is mounted.
pub async fn shutdown() -> Result<(), String> {
    let Some(v) = volume::take_for_poweroff() else {
        return Ok(());
    };
    crate::apisvc::stop();
    let fuse = v.fuse.borrow_mut().take();
    if let Some(server) = fuse {
        crate::fusesvc::stop(&server).await;
    }
    let p9 = v.p9.borrow_mut().take();
    if let Some(server) = p9 {
        crate::p9svc::stop(&server).await;
    }
    volume::unmount(&v).await
}
