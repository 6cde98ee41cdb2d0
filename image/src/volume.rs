//! Opening what `scoutvm mount` serves: a scoutfs volume on two device
//! files (taken exclusively), or an in-memory scratch volume.
//!
//! Called by `scoutvm mount`, the FUSE tests and the FUSE bench; the
//! openers run on the fs thread (`fs_thread.rs`). Invariants: a volume is
//! served only while this process holds write locks on both devices and
//! its super lists no mounted client (no other node has it mounted); the
//! devices are the pair mkfs made (`server::check_supers`).

use crate::filedev::{FileDev, LockError};
use crate::fs_thread::{Close, Opened, Opener};
use crate::hostenv;
use scoutvm_fs::client::node::{self, NodeOptions};
use scoutvm_fs::format::super_block::SuperBlock;
use scoutvm_fs::posix::backend::Backend;
use scoutvm_fs::posix::mount::{Mount, MountOptions};
use scoutvm_fs::runtime::env::{Clock, Entropy};
use scoutvm_fs::server::role::ServerConfig;
use scoutvm_fs::sim::mem_backend::{MemBackend, MemMkfs, MemStore};
use scoutvm_fs::storage::block::read_super_from;
use scoutvm_fs::storage::dev::{BlockDev, MemDev};
use std::path::Path;
use std::rc::Rc;

/// The two devices of a volume, locked for this process.
pub struct VolumeDevs {
    pub meta: FileDev,
    pub data: FileDev,
    /// The metadata device's super block as found.
    pub sb: SuperBlock,
    /// Reclaim the mounts the super lists (`--recover`).
    pub recover: bool,
}

/// Open a device read-write and lock it for this process (refused while a
/// mount, QEMU or another tool holds it).
pub fn open_locked(path: &str, which: &str) -> Result<FileDev, String> {
    let dev = FileDev::open(Path::new(path), true)
        .map_err(|e| format!("failed to open {which} device '{path}': {e}"))?;
    match dev.lock_exclusive() {
        Ok(()) => Ok(dev),
        Err(LockError::InUse) => Err(format!(
            "{which} device '{path}' is in use (another process holds a lock on it: \
             a running appliance, QEMU or another scoutvm mount)"
        )),
        Err(LockError::Io(e)) => Err(format!("cannot lock {which} device '{path}': {e}")),
    }
}

/// Open and lock both devices and check that they hold a volume nobody
/// has mounted. `recover`: the mounts its super lists are known to be dead
/// (a mount that crashed); they are reclaimed when the volume is served.
pub fn open_for_mount(
    meta_path: &str,
    data_path: &str,
    recover: bool,
) -> Result<VolumeDevs, String> {
    if let (Ok(a), Ok(b)) = (
        std::fs::canonicalize(meta_path),
        std::fs::canonicalize(data_path),
    ) {
        if a == b {
            return Err("the meta and data devices must be different".into());
        }
    }
    let meta = open_locked(meta_path, "meta")?;
    let data = open_locked(data_path, "data")?;
    let sb = read_super_from(&meta)
        .map_err(|e| format!("meta device '{meta_path}' holds no scoutfs volume ({e})"))?;
    let dsb = read_super_from(&data)
        .map_err(|e| format!("data device '{data_path}' holds no scoutfs volume ({e})"))?;
    scoutvm_fs::server::commit::check_supers(&sb, &dsb, meta.size_bytes(), data.size_bytes())
        .map_err(|e| format!("'{meta_path}' and '{data_path}' are not one volume: {e}"))?;
    if !sb.mounted_clients.is_empty() && !recover {
        return Err(format!(
            "the volume on '{meta_path}' is mounted elsewhere (its super lists mounted \
             clients): unmount it there first; if that mount crashed and no node on \
             any host has the volume mounted, mount with --recover to reclaim it"
        ));
    }
    Ok(VolumeDevs {
        meta,
        data,
        sb,
        recover,
    })
}

/// Serve the volume on `devs`: the server role and the mount's client in
/// this process (`node::mount_volume`), ticked by the fs thread. A
/// `recover`ed volume's listed mounts are reclaimed as the server starts.
pub fn volume_opener(devs: VolumeDevs, opts: MountOptions) -> Opener {
    Box::new(move |ctx| {
        Box::pin(async move {
            let VolumeDevs {
                meta,
                data,
                sb: _,
                recover,
            } = devs;
            let meta: Rc<dyn BlockDev> = Rc::new(meta);
            let data: Rc<dyn BlockDev> = Rc::new(data);
            let clock: Rc<dyn Clock> = ctx.clock.clone();
            let entropy: Rc<dyn Entropy> = Rc::new(hostenv::host_entropy());
            let nopts = NodeOptions {
                mount: opts,
                // a listed mount is someone else's unless --recover said
                // it is dead (open_for_mount refused it otherwise)
                server: ServerConfig {
                    reclaim_mounted_at_start: recover,
                    ..ServerConfig::default()
                },
                // the fs thread ticks the mount
                tick_ns: 0,
                ..NodeOptions::default()
            };
            let (mount, node) =
                node::mount_volume(meta, data, clock, entropy, ctx.handle.clone(), nopts)
                    .await
                    .map_err(|e| format!("mounting the volume failed: {e}"))?;
            let close: Close = Box::new(move |m: Rc<Mount>| {
                Box::pin(async move {
                    // the node holds the mount too; it commits and says
                    // farewell (the server forgets this mount)
                    drop(m);
                    node.unmount()
                        .await
                        .map_err(|e| format!("clean unmount failed: {e}"))
                })
            });
            Ok(Opened { mount, close })
        })
    })
}

/// An in-memory volume with `data_bytes` of file data space (sparse: it
/// costs what is written); discarded at unmount.
pub fn mem_opener(data_bytes: u64, opts: MountOptions) -> Opener {
    Box::new(move |ctx| {
        Box::pin(async move {
            let data_blocks = data_bytes / 4096;
            let [u0, u1] = hostenv::random_u64s::<2>();
            let mut uuid = [0u8; 16];
            uuid[..8].copy_from_slice(&u0.to_le_bytes());
            uuid[8..].copy_from_slice(&u1.to_le_bytes());
            let store = MemStore::mkfs(MemMkfs {
                data_blocks,
                now: ctx.clock.wall(),
                uuid,
                ..MemMkfs::default()
            });
            let backend: Rc<dyn Backend> = MemBackend::new(store);
            let dev: Rc<dyn BlockDev> = Rc::new(MemDev::new(data_blocks * 4096));
            let clock: Rc<dyn Clock> = ctx.clock.clone();
            let mount = Mount::mount(backend, dev, clock, opts)
                .await
                .map_err(|e| format!("mounting the in-memory volume failed: {e}"))?;
            Ok(Opened {
                mount: Rc::new(mount),
                close: Box::new(|m: Rc<Mount>| {
                    Box::pin(async move { m.sync().await.map_err(|e| format!("sync: {e}")) })
                }),
            })
        })
    })
}
