//! The Linux container runtime: namespaces, cgroups, overlayfs, pivot_root, and berth's own
//! init as each container's PID 1.
//!
//! `launch` (in berth) → re-exec of the sealed berth binary as `__berth-setup` (`setup`) →
//! fork of the container's PID 1, which builds the root (`rootfs`), forks the service and stays
//! as its init. Limits live in the container's cgroup (`cgroup`).

pub mod apparmor;
pub mod cgroup;
pub mod devices;
pub mod error;
pub mod kernel;
pub mod launch;
pub mod logs;
pub mod mounts;
pub mod net;
pub mod rootfs;
pub mod runtime;
pub mod seccomp;
pub mod security;
pub mod setup;
pub mod spec;

/// The hidden first argument that makes the berth binary act as the setup process.
pub const SETUP_ARG: &str = "__berth-setup";
/// The hidden first argument that makes the berth binary act as the zygote.
pub const ZYGOTE_ARG: &str = "__berth-zygote";

/// The hidden first argument that makes the berth binary start a process in a container.
pub const EXEC_ARG: &str = "__berth-exec";

/// The start time of a process (field 22 of /proc/<pid>/stat, in clock ticks since boot), or
/// `None` when it does not exist or is a zombie. A pid plus its start time names one process
/// for good: a recycled pid has another start time.
pub fn process_starttime(pid: i32) -> Option<u64> {
    crate::sys::process_starttime(pid)
}

/// Runs the hidden modes of the binary. Called first thing in `main`, before any thread exists.
pub fn dispatch() -> Option<i32> {
    let arg = std::env::args_os().nth(1)?;
    if arg == SETUP_ARG {
        return Some(setup::main());
    }
    if arg == EXEC_ARG {
        return Some(setup::exec_main());
    }
    if arg == ZYGOTE_ARG {
        return Some(setup::zygote());
    }
    None
}
