//! What the setup process is told about one container: everything it needs, decided by the
//! parent, so that the setup process makes no decisions and reads no project files.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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

/// The image label that marks an image built `FROM host`.
pub const HOST_BASE_LABEL: &str = "org.berth.base";

impl Rootfs {
    /// Whether the host's OS directories are part of this root.
    pub fn has_host(&self) -> bool {
        matches!(self, Rootfs::Host | Rootfs::HostLayers(_))
    }
}

/// The service process: what init starts inside the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Process {
    /// argv; `args[0]` is looked up in `PATH` inside the container when it has no `/`.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Working directory inside the container (resolved there, never on the host).
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Keep `no_new_privs` off (`security_opt: [no-new-privileges:false]`).
    pub allow_new_privs: bool,
    /// `cap_add` / `cap_drop` relative to Docker's default set; `privileged` keeps all.
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub privileged: bool,
    /// Seccomp BPF programs to install, in order (`None`: `seccomp=unconfined`). Sent as hex:
    /// the same program as JSON numbers is four times larger and slower to read, on every start.
    #[serde(with = "hex_programs")]
    pub seccomp: Option<Vec<Vec<u64>>>,
    /// `tty: true`: the service runs on a terminal of the container's own devpts (its output
    /// still goes to the log, through init).
    #[serde(default)]
    pub tty: bool,
    /// `stdin_open: true`: stdin is a pipe init holds open (reads wait instead of seeing end of
    /// file), as with `docker run -i`.
    #[serde(default)]
    pub stdin_open: bool,
    /// `ulimits`: (name as Compose writes it, soft, hard).
    #[serde(default)]
    pub rlimits: Vec<(String, i64, i64)>,
    /// `oom_score_adj` (-1000..1000): how readily the OOM killer picks the service.
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
    /// The AppArmor profile the process enters when it executes its program (None: unconfined,
    /// or a host without AppArmor).
    #[serde(default)]
    pub apparmor: Option<String>,
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

/// A resource limit the kernel enforces through the container's cgroup.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Limits {
    /// Fraction of CPUs (`cpus: 0.5`).
    pub cpus: Option<f64>,
    pub cpu_shares: Option<u64>,
    /// `cpu_period` / `cpu_quota` (microseconds; they win over `cpus`, as in Docker).
    #[serde(default)]
    pub cpu_period: Option<u64>,
    #[serde(default)]
    pub cpu_quota: Option<i64>,
    /// `cpuset`: the CPUs the container may run on (`0-1`, `0,2`).
    #[serde(default)]
    pub cpuset: Option<String>,
    pub memory: Option<u64>,
    /// Memory plus swap (Compose's `memswap_limit`); -1 for unlimited swap.
    pub memory_swap: Option<i64>,
    pub memory_reservation: Option<u64>,
    /// `mem_swappiness` (0-100; cgroup v1 only, as in Docker).
    #[serde(default)]
    pub swappiness: Option<u64>,
    pub pids: Option<i64>,
    /// Which devices the container's processes may make, read and write (the default allow
    /// list unless the file adds to it; everything for `privileged`).
    #[serde(default)]
    pub devices: super::devices::Policy,
    /// `blkio_config`, its devices resolved to numbers.
    #[serde(default)]
    pub blkio: Blkio,
}

/// Block I/O weight and throttles (Compose's `blkio_config`), each per-device entry by the
/// device's major and minor numbers.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Blkio {
    /// 10 to 1000, as in Compose and cgroup v1's `blkio.weight`.
    pub weight: Option<u32>,
    pub weight_device: Vec<(u32, u32, u32)>,
    pub read_bps: Vec<(u32, u32, u64)>,
    pub write_bps: Vec<(u32, u32, u64)>,
    pub read_iops: Vec<(u32, u32, u64)>,
    pub write_iops: Vec<(u32, u32, u64)>,
}

impl Blkio {
    pub fn is_empty(&self) -> bool {
        *self == Blkio::default()
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

/// Seccomp programs as hex strings (16 digits per BPF instruction).
mod hex_programs {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<Vec<u64>>>, s: S) -> Result<S::Ok, S::Error> {
        let hex: Option<Vec<String>> = v.as_ref().map(|progs| {
            progs
                .iter()
                .map(|p| p.iter().map(|w| format!("{w:016x}")).collect::<String>())
                .collect()
        });
        hex.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Vec<u64>>>, D::Error> {
        let hex: Option<Vec<String>> = Option::deserialize(d)?;
        let Some(progs) = hex else { return Ok(None) };
        let mut out = Vec::with_capacity(progs.len());
        for p in progs {
            if p.len() % 16 != 0 {
                return Err(serde::de::Error::custom("seccomp program: bad length"));
            }
            let words = (0..p.len())
                .step_by(16)
                .map(|i| u64::from_str_radix(&p[i..i + 16], 16))
                .collect::<Result<Vec<u64>, _>>()
                .map_err(serde::de::Error::custom)?;
            out.push(words);
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seccomp_programs_round_trip_as_hex() {
        let p = Process {
            seccomp: Some(vec![vec![0, u64::MAX, 0x0020_0000_0000_0004], vec![7]]),
            ..Process::default()
        };
        let text = serde_json::to_string(&p).unwrap();
        assert!(text.contains("ffffffffffffffff"));
        let back: Process = serde_json::from_str(&text).unwrap();
        assert_eq!(back, p);
        let none: Process =
            serde_json::from_str(&serde_json::to_string(&Process::default()).unwrap()).unwrap();
        assert_eq!(none.seccomp, None);
    }
}
