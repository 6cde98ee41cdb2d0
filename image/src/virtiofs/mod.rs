//! `scoutvm virtiofs`: a vhost-user-fs backend (the device side of
//! virtio-fs) that relays a Linux guest's FUSE requests to a running
//! appliance's FUSE-over-TCP service and its replies back.
//!
//! - `guest_memory.rs`: the guest RAM the frontend shares, bounds-checked;
//! - `virtqueue.rs`: the split virtqueue, device side;
//! - `vhost_user.rs`: the vhost-user messages (`vhost` crate) and the queues' state;
//! - `relay.rs`: requests out over TCP, replies back into the queues.

pub mod guest_memory;
pub mod virtqueue;
