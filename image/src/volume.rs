//! Opening what `scoutvm mount` serves: a scoutfs volume on two device
//! files (taken exclusively), or an in-memory scratch volume.
//!
//! Called by `scoutvm mount`, the FUSE tests and the FUSE bench; the
//! openers run on the fs thread (`fs_thread.rs`). Invariants: a volume is
//! served only while this process holds write locks on both devices and
//! its super lists no mounted client (no other node has it mounted); the
//! devices are the pair mkfs made (`server::check_supers`).

use crate::filedev::{FileDev, LockError};
use crate::fs_thread::{Opened, Opener};
use crate::hostenv;
use scoutvm_fs::backend::Backend;
use scoutvm_fs::block::read_super_from;
use scoutvm_fs::dev::{BlockDev, MemDev};
use scoutvm_fs::env::Clock;
use scoutvm_fs::format::super_block::SuperBlock;
use scoutvm_fs::mem_backend::{MemBackend, MemMkfs, MemStore};
use scoutvm_fs::vfs::{Mount, MountOptions};
use std::path::Path;
use std::rc::Rc;

/// The two devices of a volume, locked for this process.
pub struct VolumeDevs {
    pub meta: FileDev,
    pub data: FileDev,
    /// The metadata device's super block as found.
    pub sb: SuperBlock,
}

fn open_locked(path: &str, which: &str) -> Result<FileDev, String> {
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
    scoutvm_fs::server::check_supers(&sb, &dsb, meta.size_bytes(), data.size_bytes())
        .map_err(|e| format!("'{meta_path}' and '{data_path}' are not one volume: {e}"))?;
    if !sb.mounted_clients.is_empty() && !recover {
        return Err(format!(
            "the volume on '{meta_path}' is mounted elsewhere (its super lists mounted \
             clients): unmount it there first; if that mount crashed and no node on \
             any host has the volume mounted, mount with --recover to reclaim it"
        ));
    }
    Ok(VolumeDevs { meta, data, sb })
}

/// Serve the volume on `devs`.
///
/// The persistent backend (log btrees, forest, server) is not on this
/// branch yet, so this refuses after every check has passed.
pub fn volume_opener(devs: VolumeDevs, _opts: MountOptions) -> Opener {
    Box::new(move |_ctx| {
        Box::pin(async move {
            drop(devs);
            Err(
                "this build cannot serve volumes yet: the persistent backend is not merged \
                 (use --mem for an in-memory volume)"
                    .to_string(),
            )
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
