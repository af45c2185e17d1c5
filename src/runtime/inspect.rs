//! The runtime seam's second half: what the CLI and the builder ask of containers that exist
//! (details, resource use, signals, pause, processes, exec) and the image store they are made
//! from. `Runtime` is the first half, the lifecycle the reconciler drives.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::PathBuf;

use serde::Serialize;

use super::RuntimeError;
use crate::image::ImageStore;
use crate::plan::State;

/// The name of a container's log file in its directory (`Info::dir`); rotated files add `.1`,
/// `.2`, ...
pub const LOG_FILE: &str = "container.log";

/// A cgroup's resource use at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// CPU time used since the cgroup was made, in nanoseconds.
    pub cpu_ns: u64,
    /// Memory in use (without inactive page cache), in bytes.
    pub memory: u64,
    /// The memory limit, if any.
    pub memory_limit: Option<u64>,
    pub pids: u64,
}

/// A container's resource use (`berth stats`).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Stats {
    pub usage: Usage,
    pub net_rx: u64,
    pub net_tx: u64,
    /// The bandwidth limits the kernel enforces, in bytes per second (`bandwidth:`).
    pub net_rx_limit: Option<u64>,
    pub net_tx_limit: Option<u64>,
    /// Bytes the writable layer takes on disk.
    pub disk: u64,
}

/// What `ps` shows about one container.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    pub name: String,
    pub project: String,
    pub service: String,
    pub index: u32,
    pub image: String,
    pub command: Vec<String>,
    pub created_at: u64,
    pub started_at: Option<u64>,
    /// The init's host pid while it runs.
    pub pid: Option<i32>,
    pub state: State,
    /// When the exit status was written (seconds since the epoch).
    pub finished_at: Option<u64>,
    /// The container's directory: its log files are there.
    pub dir: PathBuf,
}

/// How `berth exec` (or a health probe) changes the service's process.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    pub argv: Vec<String>,
    /// `-e KEY=VALUE`, over the container's environment.
    pub env: Vec<String>,
    /// `-u`: name or uid[:gid], resolved in the container's files.
    pub user: Option<String>,
    /// `-w`: working directory inside the container.
    pub workdir: Option<String>,
    /// Run on a terminal of the container's devpts.
    pub tty: bool,
    /// `--privileged`: every capability, no seccomp filter.
    pub privileged: bool,
}

/// A process started in a running container (`berth exec`).
pub trait Started {
    /// Its host pid (to signal it).
    fn pid(&self) -> i32;
    /// The master of its terminal, when it has one (taken once).
    fn take_terminal(&mut self) -> Option<OwnedFd>;
    /// Readable once its exit status has arrived.
    fn status_fd(&self) -> BorrowedFd<'_>;
    /// Waits for it to end: its exit status.
    fn wait(self) -> Result<i32, RuntimeError>;
}

/// What the CLI and the builder ask of existing containers and of the image store.
pub trait Inspect: Send + Sync {
    type Process: Started;
    /// Details of one container, for `ps`, `logs` and `exec`.
    fn info(&self, name: &str) -> Result<Info, RuntimeError>;
    /// Sends `sig` to the container's init, which forwards it to the service (`berth kill`).
    fn signal(&self, name: &str, sig: nix::sys::signal::Signal) -> Result<(), RuntimeError>;
    /// Freezes or thaws every process of the container (`pause` / `unpause`).
    fn freeze(&self, name: &str, frozen: bool) -> Result<(), RuntimeError>;
    /// Starts a process in the running container `name` with these descriptors as its stdio.
    fn exec(
        &self,
        name: &str,
        opts: &ExecOptions,
        stdio: [OwnedFd; 3],
    ) -> Result<Self::Process, RuntimeError>;
    /// What the running container uses now.
    fn stats(&self, name: &str) -> Result<Stats, RuntimeError>;
    /// The host pids of the container's processes.
    fn processes(&self, name: &str) -> Result<Vec<u32>, RuntimeError>;
    /// The image store containers are made from.
    fn images(&self) -> &ImageStore;
    /// The ids of the images that some container (of any project) is made from.
    fn images_in_use(&self) -> std::collections::BTreeSet<String>;
}
