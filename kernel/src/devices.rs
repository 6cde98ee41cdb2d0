//! The devices this node found at boot: virtio-blk disks named vda, vdb,
//! ... in command-line order, the virtio-net cards eth0, eth1, ... (handed
//! to `net`, at most `cmdline::NICS_MAX`), and
//! whatever else was seen. Owns the routing of device interrupts back to
//! their drivers ([`service`]). Disks live for the whole run
//! (`&'static`), so any subsystem may hold one as a `BlockDev`.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use scoutvm_drivers::blk::VirtioBlk;
use scoutvm_drivers::net::VirtioNet;
use scoutvm_drivers::virtio::{self, Location};
use virtio_drivers::transport::DeviceType;

use crate::runtime::Once;

/// One attached disk.
pub struct BlockEntry {
    pub name: String,
    pub dev: &'static VirtioBlk,
}

/// A device we list but do not drive.
pub struct OtherDevice {
    pub kind: &'static str,
    pub location: Location,
    pub note: String,
}

pub struct DeviceList {
    pub blocks: Vec<BlockEntry>,
    pub others: Vec<OtherDevice>,
    /// (mac, location, gsi) of each network card, eth0 first.
    pub nets: Vec<([u8; 6], Location, Option<u32>)>,
}

static DEVICES: Once<DeviceList> = Once::new();

/// Probe the buses and attach drivers. Returns the network cards for the
/// network stack, eth0 first. Call once, after interrupts are set up.
pub fn probe() -> Vec<VirtioNet> {
    let t0 = scoutvm_drivers::clock::monotonic_ns();
    let (found, skipped) = virtio::probe();
    log::debug!(
        "virtio probe took {} us",
        (scoutvm_drivers::clock::monotonic_ns() - t0) / 1000
    );
    let mut blocks = Vec::new();
    let mut others = Vec::new();
    let mut nets: Vec<VirtioNet> = Vec::new();
    for s in skipped {
        others.push(OtherDevice {
            kind: "virtio",
            location: s.location,
            note: String::from(s.reason),
        });
    }
    for f in found {
        let location = f.location;
        let t0 = scoutvm_drivers::clock::monotonic_ns();
        let f_kind = f.kind;
        match f.kind {
            DeviceType::Block => {
                let index = blocks.len() as u32;
                match VirtioBlk::new(f, index) {
                    Ok(dev) => {
                        let name = format!("vd{}", (b'a' + (index as u8 % 26)) as char);
                        blocks.push(BlockEntry {
                            name,
                            dev: Box::leak(Box::new(dev)),
                        });
                    }
                    Err(e) => others.push(OtherDevice {
                        kind: "virtio-blk",
                        location,
                        note: format!("attach failed: {e:?}"),
                    }),
                }
            }
            DeviceType::Network if nets.len() < scoutvm_kernel::cmdline::NICS_MAX => {
                match VirtioNet::new(f) {
                    Ok(dev) => nets.push(dev),
                    Err(e) => others.push(OtherDevice {
                        kind: "virtio-net",
                        location,
                        note: format!("attach failed: {e:?}"),
                    }),
                }
            }
            kind => others.push(OtherDevice {
                kind: virtio::kind_name(kind),
                location,
                note: String::from("no driver"),
            }),
        }
        log::debug!(
            "{} at {} attached in {} us",
            virtio::kind_name(f_kind),
            location,
            (scoutvm_drivers::clock::monotonic_ns() - t0) / 1000
        );
    }
    let net_info = nets
        .iter()
        .map(|n| (n.mac(), n.location(), n.gsi()))
        .collect();
    DEVICES.set(DeviceList {
        blocks,
        others,
        nets: net_info,
    });
    nets
}

pub fn list() -> &'static DeviceList {
    DEVICES.get()
}

pub fn blocks() -> &'static [BlockEntry] {
    DEVICES.try_get().map_or(&[], |d| d.blocks.as_slice())
}

/// A disk by name (`vdb`) or by its serial/ID string.
pub fn block(name: &str) -> Option<&'static BlockEntry> {
    blocks().iter().find(|b| b.name == name).or_else(|| {
        blocks()
            .iter()
            .find(|b| !name.is_empty() && b.dev.serial() == name)
    })
}

/// The partition table on `b` ("GPT", "MBR"), if any: such a disk (the
/// boot disk of the UEFI image) is never a volume device.
pub fn partition_table(b: &BlockEntry) -> Option<&'static str> {
    use scoutvm_fs::storage::dev::BlockDev;
    let mut head = alloc::vec![0u8; scoutvm_kernel::partition::PROBE_BYTES];
    b.dev.read(0, &mut head).ok()?;
    scoutvm_kernel::partition::table_of(&head)
}

/// The disk playing `role` ("meta", "data"): the one named by the
/// `role=` cmdline key, else the one whose serial is the role name.
pub fn role(role: &str) -> Option<&'static BlockEntry> {
    match crate::runtime::cmdline().get(role) {
        Some(name) => block(name),
        None => blocks().iter().find(|b| b.dev.serial() == role),
    }
}

/// Hand the device lines that fired back to their drivers.
pub fn service(pending: u64) {
    for b in blocks() {
        if let Some(gsi) = b.dev.gsi() {
            if pending & (1 << gsi) != 0 {
                b.dev.service_interrupt();
                scoutvm_drivers::irq::unmask(gsi);
            }
        }
    }
    let nets = DEVICES.try_get().map_or(&[][..], |d| d.nets.as_slice());
    for (i, (_, _, gsi)) in nets.iter().enumerate() {
        if gsi.is_some_and(|g| pending & (1 << g) != 0) {
            crate::net::service_interrupt(i);
        }
    }
}
