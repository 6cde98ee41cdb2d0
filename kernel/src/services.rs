//! Boot-time services: what the node starts once devices, network and the
//! executor are up: the shell, then the volume (mount it on meta/data and
//! serve 9P on TCP 564). A subsystem adds one line to [`SERVICES`] with a
//! start function that spawns its tasks on the executor.
//!
//! The shell shows its first prompt once the boot messages are out: a
//! task with something to say at boot (mounting, starting 9P) holds a
//! `BootStep` (see `boot_steps.rs`) until it has said it, and `boot_settled` waits for none
//! to be held and for the network to have its address, at most
//! `BOOT_SETTLE_MAX_NS`. Anything logged later reprints the prompt
//! (`console::set_input_line`).

use scoutvm_fs::runtime::exec::Handle;

use crate::boot_steps::boot_settled;

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
    h.spawn_named("shell", crate::shell::run(boot_settled()))
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
