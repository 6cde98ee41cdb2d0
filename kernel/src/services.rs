//! Boot-time services: what the node starts once devices, network and the
//! executor are up: the shell, then the volume (mount it on meta/data and
//! serve 9P on TCP 564). A subsystem adds one line to [`SERVICES`] with a
//! start function that spawns its tasks on the executor.

use scoutvm_fs::runtime::exec::Handle;

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
