//! What the setup process is told about one container: everything it needs, decided by the
//! parent, so that the setup process makes no decisions and reads no project files.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::runtime::lower::config::{Blkio, Limits, Process};

/// The root filesystem of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rootfs {
    /// `image: host`: the host's OS directories, each as the read-only lower layer of an overlay
    /// whose upper layer is the container's; everything else starts empty.
    Host,
    /// An image's layers (unpacked directories), bottom first.
    Layers(Vec<PathBuf>),
    /// An image built `FROM host`: its layers (bottom first, possibly none) over the host's OS
    /// directories. The root is an overlay of the layers; each host OS directory is an overlay
    /// of the layers' own copy of it over the host's, with its upper directory at the same path
    /// in the container's upper layer, so that layer holds every change as one tree.
    HostLayers(Vec<PathBuf>),
}

pub use crate::image::host::HOST_BASE_LABEL;

impl Rootfs {
    /// Whether the host's OS directories are part of this root.
    pub fn has_host(&self) -> bool {
        matches!(self, Rootfs::Host | Rootfs::HostLayers(_))
    }
}

impl Process {
    /// Sets Docker's default seccomp profile for this process's capabilities (compiled once
    /// per capability set and reused).
    pub fn default_seccomp(&mut self) -> Result<(), super::error::SetupError> {
        use std::collections::HashMap;
        use std::sync::{Mutex, OnceLock};
        type Cache = Mutex<HashMap<Vec<String>, Vec<Vec<u64>>>>;
        static CACHE: OnceLock<Cache> = OnceLock::new();
        let set = super::security::effective_set(&self.cap_add, &self.cap_drop, self.privileged)?;
        let mut key: Vec<String> = set.iter().map(|c| c.to_string()).collect();
        key.sort();
        let cache = CACHE.get_or_init(Default::default);
        let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = map.get(&key) {
            self.seccomp = Some(f.clone());
            return Ok(());
        }
        let f = super::seccomp::default_filters(&set)?;
        map.insert(key, f.clone());
        self.seccomp = Some(f);
        Ok(())
    }
}

/// One container, as the setup process needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// Container name (for messages).
    pub name: String,
    pub hostname: String,
    pub domainname: Option<String>,
    pub rootfs: Rootfs,
    /// The container's state directory: `root/` (the mount point of its root), `upper/` and
    /// `work/` (its writable layers).
    pub dir: PathBuf,
    pub read_only: bool,
    /// Directories of the container's cgroup, one per hierarchy, to join before unsharing.
    pub cgroups: Vec<PathBuf>,
    /// Give the container its own network namespace (only `lo`, up). False shares the host's.
    pub own_network: bool,
    /// A network namespace to join instead of making one: prepared by berth with the
    /// container's interfaces, or another container's (`network_mode: service:`).
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// The container's /etc/hosts and /etc/resolv.conf (None: made from the host's).
    #[serde(default)]
    pub hosts: Option<String>,
    #[serde(default)]
    pub resolv: Option<String>,
    /// Size of /dev/shm in bytes (`shm_size`; default 64 MiB, as Docker).
    #[serde(default)]
    pub shm_size: Option<u64>,
    /// Namespaced sysctls to set in the container (`sysctls`).
    #[serde(default)]
    pub sysctls: Vec<(String, String)>,
    /// Write the service's output to `<dir>/container.log` as JSON lines (init does it); None
    /// leaves the service on the setup process's stdout and stderr.
    #[serde(default)]
    pub log: Option<super::logs::LogSpec>,
    /// The service's volumes, bind mounts and tmpfs, ready on the host.
    #[serde(default)]
    pub mounts: Vec<crate::disk::Resolved>,
    /// `storage_opt.size`: the loop device of the sized file system that holds the writable
    /// layer (`root/`, `upper/`, `work/` go in it, mounted at `<dir>/rw`).
    #[serde(default)]
    pub rw_device: Option<PathBuf>,
    /// `devices`: host device nodes made in the container's /dev, as (host path, path in the
    /// container).
    #[serde(default)]
    pub devices: Vec<(PathBuf, String)>,
    /// `ipc: host`: the host's IPC namespace (and its /dev/shm) instead of one of its own.
    #[serde(default)]
    pub host_ipc: bool,
    /// `uts: host`: the host's hostname; berth then sets no hostname or domain name.
    #[serde(default)]
    pub host_uts: bool,
    pub process: Process,
}

/// A process to start inside a running container (`berth exec`, health probes): it joins the
/// container's namespaces and cgroup and gets the same credentials and security setup as the
/// service (with its own command, environment, user and working directory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecSpec {
    /// Container name (for messages).
    pub name: String,
    /// The host pid of the container's init and its start time: the namespaces to join are its,
    /// and a recycled pid is refused.
    pub pid: i32,
    pub starttime: u64,
    /// Directories of the container's cgroup, one per hierarchy.
    pub cgroups: Vec<PathBuf>,
    /// The container has its own network namespace (false: it shares the host's).
    pub own_network: bool,
    pub process: Process,
}
