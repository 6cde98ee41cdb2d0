//! The host side of ScoutVM as a library: the file-backed block device,
//! the host clock, the fs thread that owns a mounted filesystem, the FUSE
//! front end and the volume openers. The `scoutvm` tool, the FUSE tests
//! and the FUSE bench use it.

pub mod api_client;
pub mod disk_image;
pub mod fence_agent;
pub mod filedev;
pub mod fs_thread;
pub mod fuse;
pub mod fuse_relay;
pub mod fuse_tcp;
pub mod host_service;
pub mod hostenv;
pub mod p9_tcp;
pub mod p9load;
pub mod virtiofs;
pub mod volume;
