//! A container's typed configuration: what its process, its cgroup limits and its log are,
//! decided from the file and the image by `lower`, carried to the kernel by the runtime.

use serde::{Deserialize, Serialize};

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

/// `logging.options.max-size` / `max-file`, with bounded defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSpec {
    pub max_size: u64,
    pub max_files: u32,
}

impl Default for LogSpec {
    fn default() -> Self {
        LogSpec {
            max_size: 10 << 20,
            max_files: 3,
        }
    }
}

/// A command run inside the container at a point of its life (Compose's `post_start`,
/// `pre_stop`), as `exec` runs one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Hook {
    pub argv: Vec<String>,
    /// `KEY=VALUE`, over the container's environment.
    pub env: Vec<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub privileged: bool,
}

/// The container's lifecycle hooks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Hooks {
    /// Run once its process has started, in order; a failing one fails the start.
    pub post_start: Vec<Hook>,
    /// Run before its stop signal, in order; a failing one is recorded and the stop goes on.
    pub pre_stop: Vec<Hook>,
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
