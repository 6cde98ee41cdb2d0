//! Boot steps: a task with something to say at boot (mounting, starting
//! 9P) holds a [`BootStep`] until it has said it; [`boot_settled`] waits
//! for none to be held and for the network to have its address, at most
//! [`BOOT_SETTLE_MAX_NS`]. The shell's first prompt waits for it, so the
//! prompt follows the boot messages. A leaf module: the services and the
//! tasks they start both use it.

use core::sync::atomic::{AtomicUsize, Ordering};

use scoutvm_kernel::cmdline::NetConfig;

/// Longest the first prompt waits for the boot messages (a DHCP server
/// that never answers must not hide the shell).
pub const BOOT_SETTLE_MAX_NS: u64 = 3_000_000_000;
/// How often the first prompt looks again.
const BOOT_SETTLE_POLL_NS: u64 = 10_000_000;

static BOOT_STEPS: AtomicUsize = AtomicUsize::new(0);

/// A boot message still to come; dropping it says it is out.
pub struct BootStep(());

impl BootStep {
    pub fn begin() -> BootStep {
        BOOT_STEPS.fetch_add(1, Ordering::Relaxed);
        BootStep(())
    }
}

impl Drop for BootStep {
    fn drop(&mut self) {
        BOOT_STEPS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether the network has said what it will say at boot: it has an
/// address, or it is off, or there is no interface.
fn network_settled() -> bool {
    crate::net::info().is_none_or(|i| i.addr.is_some() || i.mode == NetConfig::Off)
}

/// Wait until no boot step is pending and the network is settled, or
/// [`BOOT_SETTLE_MAX_NS`] from now.
pub async fn boot_settled() {
    let h = crate::runtime::handle();
    let deadline = scoutvm_drivers::clock::monotonic_ns().saturating_add(BOOT_SETTLE_MAX_NS);
    while (BOOT_STEPS.load(Ordering::Relaxed) != 0 || !network_settled())
        && scoutvm_drivers::clock::monotonic_ns() < deadline
    {
        h.sleep_ns(BOOT_SETTLE_POLL_NS).await;
    }
}
