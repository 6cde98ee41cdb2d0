//! virtio-net as a smoltcp `phy::Device`. Receive buffers are recycled to
//! the device as soon as smoltcp consumed them; transmit completes before
//! `consume` returns. The main loop calls [`VirtioNet::service_interrupt`]
//! when the line fires, then polls the interface.

use core::cell::RefCell;

use scoutvm_fs::counter;
use smoltcp::phy::{self, Checksum, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use virtio_drivers::device::net::VirtIONet;
use virtio_drivers::transport::SomeTransport;

use crate::irq::{self, Trigger};
use crate::virtio::{Found, KernelHal, Location};

/// Receive ring depth and buffer size.
const QUEUE_SIZE: usize = 64;
const BUF_LEN: usize = 2048;
/// Ethernet MTU (frame without FCS).
pub const MTU: usize = 1514;

type Inner = VirtIONet<KernelHal, SomeTransport<'static>, QUEUE_SIZE>;

pub struct VirtioNet {
    dev: RefCell<Inner>,
    mac: [u8; 6],
    location: Location,
    irq: Option<(u32, Trigger)>,
}

impl VirtioNet {
    pub fn new(found: Found) -> Result<Self, virtio_drivers::Error> {
        let mut dev = Inner::new(found.transport, BUF_LEN)?;
        let mac = dev.mac_address();
        dev.enable_interrupts();
        dev.ack_interrupt();
        if let Some((gsi, trigger)) = found.irq {
            irq::route(gsi, trigger);
        }
        Ok(VirtioNet {
            dev: RefCell::new(dev),
            mac,
            location: found.location,
            irq: found.irq,
        })
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    pub fn location(&self) -> Location {
        self.location
    }

    pub fn gsi(&self) -> Option<u32> {
        self.irq.map(|i| i.0)
    }

    /// Acknowledge the device and reopen its line.
    pub fn service_interrupt(&self) {
        self.dev.borrow_mut().ack_interrupt();
        if let Some((gsi, _)) = self.irq {
            irq::unmask(gsi);
        }
    }

    /// Whether a received frame is waiting.
    pub fn can_recv(&self) -> bool {
        self.dev.borrow().can_recv()
    }
}

pub struct NetRxToken<'a> {
    dev: &'a RefCell<Inner>,
    buf: virtio_drivers::device::net::RxBuffer,
}

pub struct NetTxToken<'a> {
    dev: &'a RefCell<Inner>,
}

impl phy::RxToken for NetRxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        counter!("net.rx_frames").inc();
        counter!("net.rx_bytes").add(self.buf.packet_len() as u64);
        let r = f(self.buf.packet());
        if self.dev.borrow_mut().recycle_rx_buffer(self.buf).is_err() {
            counter!("net.rx_recycle_errors").inc();
        }
        r
    }
}

impl phy::TxToken for NetTxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut dev = self.dev.borrow_mut();
        let mut tx = dev.new_tx_buffer(len);
        let r = f(tx.packet_mut());
        match dev.send(tx) {
            Ok(()) => {
                counter!("net.tx_frames").inc();
                counter!("net.tx_bytes").add(len as u64);
            }
            Err(_) => counter!("net.tx_errors").inc(),
        }
        r
    }
}

impl phy::Device for VirtioNet {
    type RxToken<'a> = NetRxToken<'a>;
    type TxToken<'a> = NetTxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let buf = self.dev.borrow_mut().receive().ok()?;
        Some((
            NetRxToken {
                dev: &self.dev,
                buf,
            },
            NetTxToken { dev: &self.dev },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        if self.dev.borrow().can_send() {
            Some(NetTxToken { dev: &self.dev })
        } else {
            counter!("net.tx_queue_full").inc();
            None
        }
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.max_transmission_unit = MTU;
        caps.max_burst_size = Some(QUEUE_SIZE / 2);
        caps.medium = Medium::Ethernet;
        caps.checksum.ipv4 = Checksum::Both;
        caps
    }
}
