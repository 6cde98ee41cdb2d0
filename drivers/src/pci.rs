//! PCI configuration space through the legacy 0xCF8/0xCFC ports (q35;
//! the firmware (SeaBIOS, or OVMF which puts 64-bit BARs above 4 GiB: see
//! `paging`) has assigned the BARs). On microvm the ports read all-ones and
//! [`present`] says so.

use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction};

use crate::port::{inl, outl};

const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;

/// Port-based configuration access (mechanism #1).
#[derive(Debug)]
pub struct PortCam;

fn address(df: DeviceFunction, offset: u8) -> u32 {
    0x8000_0000
        | (df.bus as u32) << 16
        | (df.device as u32) << 11
        | (df.function as u32) << 8
        | (offset as u32 & 0xfc)
}

impl ConfigurationAccess for PortCam {
    fn read_word(&self, df: DeviceFunction, offset: u8) -> u32 {
        // SAFETY: PCI configuration mechanism #1 ports; config reads have no
        // side effects on the devices we enumerate.
        unsafe {
            outl(CONFIG_ADDRESS, address(df, offset));
            inl(CONFIG_DATA)
        }
    }

    fn write_word(&mut self, df: DeviceFunction, offset: u8, data: u32) {
        // SAFETY: as above; writes target registers the caller chose.
        unsafe {
            outl(CONFIG_ADDRESS, address(df, offset));
            outl(CONFIG_DATA, data);
        }
    }

    unsafe fn unsafe_clone(&self) -> Self {
        PortCam
    }
}

/// Whether a PCI host bridge answers at 00:00.0.
pub fn present() -> bool {
    let df = DeviceFunction {
        bus: 0,
        device: 0,
        function: 0,
    };
    PortCam.read_word(df, 0) & 0xffff != 0xffff
}

/// The GSI a device's INTx pin reaches on q35: ICH9 PIRQ A..H are GSI
/// 16..23; QEMU routes INTA..D of slots 0..24 to PIRQ E..H rotated by slot
/// (A..D are left to PCIe ports), and slots 25..31 to PIRQ A..D.
/// Verified on QEMU 7.2: slots 1, 2, 3 raise GSI 21, 22, 23.
pub fn q35_intx_gsi(slot: u8, pin: u8) -> Option<u32> {
    if !(1..=4).contains(&pin) {
        return None;
    }
    let pin = (pin - 1) as u32;
    let pirq = if slot < 25 {
        (slot as u32 + pin) % 4 + 4
    } else {
        pin & 3
    };
    Some(16 + pirq)
}

/// Read one 32-bit configuration register.
pub fn read_config(df: DeviceFunction, offset: u8) -> u32 {
    PortCam.read_word(df, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q35_intx_routing() {
        // Observed on QEMU 7.2 q35: slots 1, 2, 3 with INTA -> GSI 21, 22, 23.
        assert_eq!(q35_intx_gsi(1, 1), Some(21));
        assert_eq!(q35_intx_gsi(2, 1), Some(22));
        assert_eq!(q35_intx_gsi(3, 1), Some(23));
        assert_eq!(q35_intx_gsi(4, 1), Some(20));
        assert_eq!(q35_intx_gsi(1, 2), Some(22));
        assert_eq!(q35_intx_gsi(31, 1), Some(16));
        assert_eq!(q35_intx_gsi(3, 0), None);
        assert_eq!(q35_intx_gsi(3, 5), None);
    }
}
