//! Boot-time services: what the node starts once devices, network and the
//! executor are up: the shell, then the volume (mount it on meta/data and
//! serve 9P on TCP 564). A subsystem adds one line to [`SERVICES`] with a
//! start function that spawns its tasks on the executor.
//!
//! The shell shows its first prompt once the boot messages are out: a
//! task with something to say at boot (mounting, starting 9P) holds a
//! [`BootStep`] until it has said it, and [`boot_settled`] waits for none
//! to be held and for the network to have its address, at most
//! [`BOOT_SETTLE_MAX_NS`]. Anything logged later reprints the prompt
//! (`console::set_input_line`).

use core::sync::atomic::{AtomicUsize, Ordering};

use scoutvm_fs::runtime::exec::Handle;
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

/// One service: a name for the log and a function that spawns its tasks.
pub struct Service {
    pub name: &'static str,
    pub start: fn(&Handle) -> Result<(), alloc::string::String>,
}

/// Started in order at boot. A start error is logged; the node still
/// boots to its shell so the operator can look.
pub const SERVICES: &[Service] = &[
    Service {
        name: "shell",
        start: start_shell,
    },
    Service {
        name: "volume",
        start: start_volume,
    },
];

fn start_shell(h: &Handle) -> Result<(), alloc::string::String> {
    crate::commands::register_builtins();
    crate::cluster_net::register_commands();
    h.spawn_named("shell", crate::shell::run())
        .map(|_| ())
        .map_err(|e| alloc::format!("{e}"))
}

fn start_volume(h: &Handle) -> Result<(), alloc::string::String> {
    crate::fscmds::register();
    crate::volume_service::start(h)
}

pub fn start_all(h: &Handle) {
    for s in SERVICES {
        match (s.start)(h) {
            Ok(()) => log::debug!("service {} started", s.name),
            Err(e) => log::error!("service {} failed to start: {}", s.name, e),
        }
    }
}
