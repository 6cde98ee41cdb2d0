//! virtio-net as a smoltcp `phy::Device`, on the raw (non-blocking)
//! virtio-drivers interface. Receive buffers go back to the device as soon
//! as smoltcp consumed them. Transmit does not wait: a frame is queued and
//! the next `transmit`/`receive` reaps the ones the device finished, so a
//! burst of TCP segments is in flight at once instead of one exit and one
//! wait per frame. The main loop calls [`VirtioNet::service_interrupt`]
//! when the line fires, then polls the interface.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

use scoutvm_fs::counter;
use smoltcp::phy::{self, Checksum, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::SomeTransport;

use crate::irq::{self, Trigger};
use crate::virtio::{Found, KernelHal, Location};

/// Ring depth of each queue; also the bound on frames in flight.
const QUEUE_SIZE: usize = 64;
/// Size of every receive and transmit buffer (virtio-net header + frame).
const BUF_LEN: usize = 2048;
/// Ethernet MTU (frame without FCS).
pub const MTU: usize = 1514;

type Raw = VirtIONetRaw<KernelHal, SomeTransport<'static>, QUEUE_SIZE>;

/// A transmit buffer the device holds, with the bytes it was given.
struct InFlight {
    buf: Box<[u8]>,
    len: usize,
}

struct State {
    raw: Raw,
    /// Size of the virtio-net header in front of every frame.
    hdr_len: usize,
    /// Receive buffers the device holds, by descriptor token.
    rx: Vec<Option<Box<[u8]>>>,
    /// Transmit buffers the device holds, by descriptor token.
    tx: Vec<Option<InFlight>>,
    /// Transmit buffers ready for use (at most `QUEUE_SIZE` exist).
    tx_free: Vec<Box<[u8]>>,
}

impl State {
    /// Give a receive buffer to the device.
    fn post_rx(&mut self, mut buf: Box<[u8]>) {
        // SAFETY: the buffer is stored under its token below and not
        // touched until `poll_receive` returns that token; the boxed slice
        // never moves while it sits in `self.rx`.
        match unsafe { self.raw.receive_begin(&mut buf) } {
            Ok(token) if (token as usize) < QUEUE_SIZE => self.rx[token as usize] = Some(buf),
            _ => counter!("net.rx_post_errors").inc(),
        }
    }

    /// Take back the transmit buffers the device finished with.
    fn reap_tx(&mut self) {
        while let Some(token) = self.raw.poll_transmit() {
            let Some(done) = self.tx.get_mut(token as usize).and_then(Option::take) else {
                // A token we never issued: the ring is not ours to trust.
                counter!("net.tx_errors").inc();
                return;
            };
            // SAFETY: `done` is the buffer handed to `transmit_begin` for
            // this token, with the same length.
            if unsafe { self.raw.transmit_complete(token, &done.buf[..done.len]) }.is_err() {
                counter!("net.tx_errors").inc();
            }
            self.tx_free.push(done.buf);
        }
    }

    fn can_send(&self) -> bool {
        self.raw.can_send()
    }
}

pub struct VirtioNet {
    state: RefCell<State>,
    mac: [u8; 6],
    location: Location,
    irq: Option<(u32, Trigger)>,
}

impl VirtioNet {
    pub fn new(found: Found) -> Result<Self, virtio_drivers::Error> {
        let raw = Raw::new(found.transport)?;
        let mac = raw.mac_address();
        let mut probe = [0u8; 64];
        let hdr_len = raw.fill_buffer_header(&mut probe)?;
        let mut state = State {
            raw,
            hdr_len,
            rx: (0..QUEUE_SIZE).map(|_| None).collect(),
            tx: (0..QUEUE_SIZE).map(|_| None).collect(),
            tx_free: Vec::with_capacity(QUEUE_SIZE),
        };
        for _ in 0..QUEUE_SIZE {
            state.post_rx(vec![0u8; BUF_LEN].into_boxed_slice());
        }
        state.raw.enable_interrupts();
        state.raw.ack_interrupt();
        if let Some((gsi, trigger)) = found.irq {
            irq::route(gsi, trigger);
        }
        Ok(VirtioNet {
            state: RefCell::new(state),
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

    /// Acknowledge the device, reap finished transmits, reopen its line.
    pub fn service_interrupt(&self) {
        let mut st = self.state.borrow_mut();
        st.raw.ack_interrupt();
        st.reap_tx();
        if let Some((gsi, _)) = self.irq {
            irq::unmask(gsi);
        }
    }

    /// Whether a received frame is waiting.
    pub fn can_recv(&self) -> bool {
        self.state.borrow().raw.poll_receive().is_some()
    }

    /// Take the next received frame: its buffer and where the frame lies.
    fn take_rx(&self) -> Option<(Box<[u8]>, usize, usize)> {
        let mut st = self.state.borrow_mut();
        let token = st.raw.poll_receive()?;
        let Some(mut buf) = st.rx.get_mut(token as usize).and_then(Option::take) else {
            counter!("net.rx_errors").inc();
            return None;
        };
        // SAFETY: `buf` is the buffer handed to `receive_begin` for this
        // token.
        match unsafe { st.raw.receive_complete(token, &mut buf) } {
            Ok((hdr, len)) if hdr + len <= buf.len() => Some((buf, hdr, len)),
            _ => {
                counter!("net.rx_errors").inc();
                st.post_rx(buf);
                None
            }
        }
    }
}

pub struct NetRxToken<'a> {
    state: &'a RefCell<State>,
    buf: Box<[u8]>,
    hdr: usize,
    len: usize,
}

pub struct NetTxToken<'a> {
    state: &'a RefCell<State>,
}

impl phy::RxToken for NetRxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        counter!("net.rx_frames").inc();
        counter!("net.rx_bytes").add(self.len as u64);
        let r = f(&self.buf[self.hdr..self.hdr + self.len]);
        self.state.borrow_mut().post_rx(self.buf);
        r
    }
}

impl phy::TxToken for NetTxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut st = self.state.borrow_mut();
        st.reap_tx();
        let hdr = st.hdr_len;
        let mut buf = st
            .tx_free
            .pop()
            .unwrap_or_else(|| vec![0u8; BUF_LEN].into_boxed_slice());
        let total = hdr + len;
        if total > buf.len() {
            // smoltcp never asks for more than the MTU; keep the
            // closure's contract anyway with a scratch buffer.
            counter!("net.tx_errors").inc();
            st.tx_free.push(buf);
            drop(st);
            return f(&mut vec![0u8; len]);
        }
        if st.raw.fill_buffer_header(&mut buf[..hdr]).is_err() {
            counter!("net.tx_errors").inc();
        }
        let r = f(&mut buf[hdr..total]);
        // SAFETY: the buffer is stored under its token below and not
        // touched until `poll_transmit` returns that token; the boxed slice
        // never moves while it sits in `st.tx`.
        match unsafe { st.raw.transmit_begin(&buf[..total]) } {
            Ok(token) if (token as usize) < QUEUE_SIZE => {
                st.tx[token as usize] = Some(InFlight { buf, len: total });
                counter!("net.tx_frames").inc();
                counter!("net.tx_bytes").add(len as u64);
            }
            _ => {
                counter!("net.tx_errors").inc();
                st.tx_free.push(buf);
            }
        }
        r
    }
}

impl phy::Device for VirtioNet {
    type RxToken<'a> = NetRxToken<'a>;
    type TxToken<'a> = NetTxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let (buf, hdr, len) = self.take_rx()?;
        Some((
            NetRxToken {
                state: &self.state,
                buf,
                hdr,
                len,
            },
            NetTxToken { state: &self.state },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        let mut st = self.state.borrow_mut();
        st.reap_tx();
        if st.can_send() {
            Some(NetTxToken { state: &self.state })
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
