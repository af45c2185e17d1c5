//! Container cgroups on cgroup v2 (unified) and v1/hybrid hosts, behind one type.
//!
//! A container's cgroup is `berth/<project>/<container>` below the cgroup of the process that
//! starts berth, in every hierarchy berth uses. The cgroup files are a stable kernel ABI
//! (Documentation/admin-guide/cgroup-v2.rst, cgroup-v1/*.rst), and berth writes a handful of
//! them, so they are written directly: what is written where stays visible in this file.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::spec::Limits;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The v1 controllers berth places containers in. `freezer` is for `pause`, `devices` keeps
/// the host's device nodes out of reach (see `devices`). Each is a hierarchy the setup process
/// must join, and on v1 every join waits for the kernel's threadgroup lock: `cpuset` is used
/// only by a container that sets `cpuset:`.
/// `blkio` likewise only by one that sets `blkio_config:`.
const V1_CONTROLLERS: [&str; 8] = [
    "cpu", "cpuacct", "memory", "pids", "freezer", "devices", "cpuset", "blkio",
];

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write `{value}` to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create cgroup {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove cgroup {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no cgroup hierarchy with the {0} controller is mounted")]
    NoController(&'static str),
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Devices(#[from] super::devices::DeviceError),
}

/// Which cgroup version the host runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Version {
    /// cgroup2 at /sys/fs/cgroup.
    V2,
    /// v1 controllers, each at its mount point (hybrid hosts also have a controller-less
    /// cgroup2 at /sys/fs/cgroup/unified, which berth does not need).
    V1 { mounts: Vec<(String, PathBuf)> },
}

/// Detects the host's cgroup version from the filesystem type of /sys/fs/cgroup, once per
/// process: every look at a container's cgroup starts here, and reading mountinfo for each of
/// them was a fifth of what `ps` and `down` spend per container. The controllers' mount points
/// do not move while berth runs.
pub fn detect() -> Result<Version, CgroupError> {
    static HOST: std::sync::OnceLock<Version> = std::sync::OnceLock::new();
    if let Some(v) = HOST.get() {
        return Ok(v.clone());
    }
    let v = detect_now()?;
    Ok(HOST.get_or_init(|| v).clone())
}

fn detect_now() -> Result<Version, CgroupError> {
    let st = nix::sys::statfs::statfs(CGROUP_ROOT).map_err(|e| CgroupError::Read {
        path: CGROUP_ROOT.into(),
        source: e.into(),
    })?;
    if st.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC {
        return Ok(Version::V2);
    }
    // v1: find each controller's mount point in mountinfo.
    let info = read(Path::new("/proc/self/mountinfo"))?;
    let mut mounts = Vec::new();
    for line in info.lines() {
        // ... mount_point ... - fstype source super_options
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut r = right.split(' ');
        if r.next() != Some("cgroup") {
            continue;
        }
        let opts = r.nth(1).unwrap_or_default();
        let Some(mount_point) = left.split(' ').nth(4) else {
            continue;
        };
        for c in V1_CONTROLLERS {
            if opts.split(',').any(|o| o == c) && !mounts.iter().any(|(n, _)| n == c) {
                mounts.push((c.to_string(), PathBuf::from(mount_point)));
            }
        }
    }
    Ok(Version::V1 { mounts })
}

/// This process's cgroup path in each hierarchy (`/proc/self/cgroup`): controller -> path.
fn own_paths() -> Result<Vec<(String, String)>, CgroupError> {
    let text = read(Path::new("/proc/self/cgroup"))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next(), parts.next(), parts.next());
        let (Some(ctrls), Some(path)) = (ctrls, path) else {
            continue;
        };
        if ctrls.is_empty() {
            out.push((String::new(), path.to_string()));
        }
        for c in ctrls.split(',') {
            out.push((c.to_string(), path.to_string()));
        }
    }
    Ok(out)
}

/// This process's cgroup directory in the hierarchy of `controller` ("" for v2) mounted at
/// `mount`: where berth's `berth/...` tree starts.
fn own_base(own: &[(String, String)], controller: &str, mount: &Path) -> PathBuf {
    let rel = own
        .iter()
        .find(|(c, _)| c == controller)
        .map(|(_, p)| p.trim_start_matches('/').to_string())
        .unwrap_or_default();
    let dir = mount.join(rel);
    // A berth that moved itself into its delegated cgroup's leaf (see `move_into_leaf`), and
    // the supervisor it started there, build beside the leaf.
    match dir.parent() {
        Some(parent) if dir.file_name().is_some_and(|n| n == SELF_LEAF) => parent.to_path_buf(),
        _ => dir,
    }
}

/// The leaf of a delegated cgroup that berth's own processes move into, so that the cgroup
/// itself may hand controllers to the containers' cgroups beside it.
const SELF_LEAF: &str = "berth-self";

/// cgroup v2 forbids a cgroup that holds processes to give controllers to its children. Where
/// berth runs alone in a cgroup that was delegated to it (a systemd unit with `Delegate=yes`,
/// as `berth enable` writes, or `systemd-run -p Delegate=yes`), it moves itself into a leaf
/// below it, and the project's cgroups stay inside the unit: systemd accounts for them, and
/// stopping the unit stops them. Not delegated, or shared with other processes (a login
/// shell's scope): Err, and the caller uses the root cgroup as before.
fn move_into_leaf(dir: &Path) -> Result<(), CgroupError> {
    let delegated = ["trusted.delegate", "user.delegate"].iter().any(|k| {
        let mut buf = [0u8; 8];
        rustix::fs::getxattr(dir, *k, &mut buf).is_ok_and(|n| &buf[..n] == b"1")
    });
    if !delegated {
        return Err(CgroupError::Unsupported(format!(
            "{} is not delegated",
            dir.display()
        )));
    }
    let me = std::process::id();
    let procs = read(&dir.join("cgroup.procs"))?;
    if procs
        .split_whitespace()
        .any(|p| p.parse::<u32>().ok() != Some(me))
    {
        return Err(CgroupError::Unsupported(format!(
            "{} holds other processes",
            dir.display()
        )));
    }
    let leaf = dir.join(SELF_LEAF);
    mkdir(&leaf)?;
    write(&leaf.join("cgroup.procs"), &me.to_string())
}

/// The host's version, this process's cgroup paths, and `berth/<relative>`: what both creating
/// and opening a container's cgroup start from.
type Located = (Version, Vec<(String, String)>, PathBuf);

fn locate(relative: &str) -> Result<Located, CgroupError> {
    Ok((detect()?, own_paths()?, Path::new("berth").join(relative)))
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|e| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source: e,
    })
}

fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|e| CgroupError::Read {
        path: path.to_path_buf(),
        source: e,
    })
}

pub use crate::runtime::Usage;

/// A container's cgroup: one directory per hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    pub version: Version,
    /// (controller or "" for v2, directory).
    pub dirs: Vec<(String, PathBuf)>,
}

impl Cgroup {
    /// Creates `berth/<relative>` below this process's cgroup in every hierarchy, and writes
    /// the limits.
    pub fn create(relative: &str, limits: &Limits) -> Result<Cgroup, CgroupError> {
        let (version, own, rel) = locate(relative)?;
        let mut dirs = Vec::new();
        match &version {
            Version::V2 => {
                let mut base = own_base(&own, "", Path::new(CGROUP_ROOT));
                // cgroup v2's no-internal-process rule: a cgroup that holds processes (a login
                // session's scope, where berth usually runs) cannot hand controllers to
                // children. A delegated cgroup berth has to itself it makes room in; otherwise
                // the containers go below the root cgroup, which is exempt and which root may
                // write.
                if enable_v2_controllers(&base).is_err()
                    && (move_into_leaf(&base).is_err() || enable_v2_controllers(&base).is_err())
                {
                    base = PathBuf::from(CGROUP_ROOT);
                }
                let dir = base.join(&rel);
                // Each level below the base must delegate the controllers to the next.
                let mut cur = base.clone();
                for comp in rel.components() {
                    enable_v2_controllers(&cur)?;
                    cur = cur.join(comp);
                    mkdir(&cur)?;
                }
                dirs.push((String::new(), dir));
            }
            Version::V1 { mounts } => {
                for (ctrl, mount) in mounts {
                    if (ctrl == "cpuset" && limits.cpuset.is_none())
                        || (ctrl == "blkio" && limits.blkio.is_empty())
                    {
                        continue;
                    }
                    let mut cur = own_base(&own, ctrl, mount);
                    for comp in rel.components() {
                        let parent = cur.clone();
                        cur = cur.join(comp);
                        mkdir(&cur)?;
                        // A new v1 cpuset starts with no CPUs and no memory nodes, and nothing
                        // can join it until they are copied from its parent. Checked every time:
                        // another berth may have created the directory a moment ago.
                        if ctrl == "cpuset" {
                            for f in ["cpuset.cpus", "cpuset.mems"] {
                                if read(&cur.join(f))?.trim().is_empty() {
                                    let v = read(&parent.join(f))?;
                                    write(&cur.join(f), v.trim())?;
                                }
                            }
                        }
                    }
                    // cpu and cpuacct are often co-mounted: one directory, listed under both.
                    dirs.push((ctrl.clone(), cur));
                }
            }
        }
        let cg = Cgroup { version, dirs };
        // A limit the kernel refuses leaves nothing behind.
        if let Err(e) = cg.apply(limits) {
            let _ = cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    /// The existing cgroup `berth/<relative>` (None if it is not there), without creating it.
    pub fn open(relative: &str) -> Result<Option<Cgroup>, CgroupError> {
        let (version, own, rel) = locate(relative)?;
        let mut dirs = Vec::new();
        match &version {
            Version::V2 => {
                let candidates = [
                    own_base(&own, "", Path::new(CGROUP_ROOT)).join(&rel),
                    Path::new(CGROUP_ROOT).join(&rel),
                ];
                match candidates.into_iter().find(|d| d.is_dir()) {
                    Some(d) => dirs.push((String::new(), d)),
                    None => return Ok(None),
                }
            }
            Version::V1 { mounts } => {
                for (ctrl, mount) in mounts {
                    let d = own_base(&own, ctrl, mount).join(&rel);
                    if d.is_dir() {
                        dirs.push((ctrl.clone(), d));
                    }
                }
                if dirs.is_empty() {
                    return Ok(None);
                }
            }
        }
        Ok(Some(Cgroup { version, dirs }))
    }

    fn dir_of(&self, controller: &'static str) -> Result<&Path, CgroupError> {
        match self.version {
            Version::V2 => self
                .dirs
                .first()
                .map(|(_, d)| d.as_path())
                .ok_or(CgroupError::NoController(controller)),
            Version::V1 { .. } => self
                .dirs
                .iter()
                .find(|(c, _)| c == controller)
                .map(|(_, d)| d.as_path())
                .ok_or(CgroupError::NoController(controller)),
        }
    }

    /// Writes the limits into the cgroup files of the host's version.
    pub fn apply(&self, l: &Limits) -> Result<(), CgroupError> {
        const PERIOD: u64 = 100_000;
        match self.version {
            Version::V2 => {
                let d = self.dir_of("cpu")?;
                let period = l.cpu_period.unwrap_or(PERIOD);
                match (l.cpu_quota, l.cpus) {
                    (Some(q), _) if q > 0 => write(&d.join("cpu.max"), &format!("{q} {period}"))?,
                    (Some(_), _) => write(&d.join("cpu.max"), &format!("max {period}"))?,
                    (None, Some(c)) => {
                        let quota = (c * period as f64).round() as u64;
                        write(&d.join("cpu.max"), &format!("{quota} {period}"))?;
                    }
                    (None, None) if l.cpu_period.is_some() => {
                        write(&d.join("cpu.max"), &format!("max {period}"))?
                    }
                    (None, None) => {}
                }
                if let Some(c) = &l.cpuset {
                    write(&d.join("cpuset.cpus"), c.trim())?;
                }
                // v2 has no swappiness per cgroup; Docker ignores it there too.
                if let Some(s) = l.cpu_shares.filter(|s| *s > 0) {
                    write(&d.join("cpu.weight"), &shares_to_weight(s).to_string())?;
                }
                if let Some(m) = l.memory {
                    write(&d.join("memory.max"), &m.to_string())?;
                }
                if let Some(swap) = l.memory_swap {
                    // v2's swap limit is swap alone; Compose's is memory plus swap.
                    let v = match (swap, l.memory) {
                        (-1, _) => "max".to_string(),
                        (s, Some(m)) => (s.max(0) as u64).saturating_sub(m).to_string(),
                        (s, None) => s.max(0).to_string(),
                    };
                    write_if_present(&d.join("memory.swap.max"), &v)?;
                }
                if let Some(r) = l.memory_reservation {
                    write(&d.join("memory.low"), &r.to_string())?;
                }
                if let Some(p) = l.pids {
                    let v = if p <= 0 {
                        "max".to_string()
                    } else {
                        p.to_string()
                    };
                    write(&d.join("pids.max"), &v)?;
                }
                if !l.blkio.is_empty() {
                    apply_io_v2(d, &l.blkio)?;
                }
                self.apply_devices(&l.devices)?;
            }
            Version::V1 { .. } => {
                // First, so that no other limit's failure leaves a cgroup without it.
                self.apply_devices(&l.devices)?;
                if l.cpus.is_some()
                    || l.cpu_shares.is_some()
                    || l.cpu_quota.is_some()
                    || l.cpu_period.is_some()
                {
                    let d = self.dir_of("cpu")?;
                    let period = l.cpu_period.unwrap_or(PERIOD);
                    let quota = match (l.cpu_quota, l.cpus) {
                        (Some(q), _) => Some(if q > 0 { q } else { -1 }),
                        (None, Some(c)) => Some((c * period as f64).round() as i64),
                        (None, None) => None,
                    };
                    if quota.is_some() || l.cpu_period.is_some() {
                        write(&d.join("cpu.cfs_period_us"), &period.to_string())?;
                    }
                    if let Some(q) = quota {
                        write(&d.join("cpu.cfs_quota_us"), &q.to_string())?;
                    }
                    if let Some(s) = l.cpu_shares {
                        write(&d.join("cpu.shares"), &s.to_string())?;
                    }
                }
                if let Some(c) = &l.cpuset {
                    write(&self.dir_of("cpuset")?.join("cpuset.cpus"), c.trim())?;
                }
                if l.memory.is_some()
                    || l.memory_swap.is_some()
                    || l.memory_reservation.is_some()
                    || l.swappiness.is_some()
                {
                    let d = self.dir_of("memory")?;
                    if let Some(s) = l.swappiness {
                        write(&d.join("memory.swappiness"), &s.min(100).to_string())?;
                    }
                    if let Some(m) = l.memory {
                        write(&d.join("memory.limit_in_bytes"), &m.to_string())?;
                    }
                    if let Some(s) = l.memory_swap {
                        // v1's memsw limit is memory plus swap, like Compose's; it exists only
                        // when the kernel accounts swap.
                        write_if_present(&d.join("memory.memsw.limit_in_bytes"), &s.to_string())?;
                    }
                    if let Some(r) = l.memory_reservation {
                        write(&d.join("memory.soft_limit_in_bytes"), &r.to_string())?;
                    }
                }
                if let Some(p) = l.pids {
                    let d = self.dir_of("pids")?;
                    let v = if p <= 0 {
                        "max".to_string()
                    } else {
                        p.to_string()
                    };
                    write(&d.join("pids.max"), &v)?;
                }
                if !l.blkio.is_empty() {
                    apply_blkio_v1(self.dir_of("blkio")?, &l.blkio)?;
                }
            }
        }
        Ok(())
    }

    /// Puts the device policy in force: the v2 program attached, or v1's lists written. A v1
    /// host without the devices hierarchy gets an error, not an open door.
    pub fn apply_devices(&self, p: &super::devices::Policy) -> Result<(), CgroupError> {
        match self.version {
            Version::V2 => super::devices::apply_v2(self.dir_of("")?, p)?,
            Version::V1 { .. } => super::devices::apply_v1(self.dir_of("devices")?, p)?,
        }
        Ok(())
    }

    /// Moves process `pid` into the cgroup (every hierarchy).
    pub fn join(&self, pid: u32) -> Result<(), CgroupError> {
        for d in self.paths() {
            write(&d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The distinct directories (for the setup process, which joins them itself).
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        for (_, d) in &self.dirs {
            if !out.contains(d) {
                out.push(d.clone());
            }
        }
        out
    }

    /// How many times the OOM killer killed a process of this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let (file, key) = match self.version {
            Version::V2 => ("memory.events", "oom_kill"),
            Version::V1 { .. } => ("memory.oom_control", "oom_kill"),
        };
        let Ok(d) = self.dir_of("memory") else {
            return 0;
        };
        let text = fs::read_to_string(d.join(file)).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The cgroup whose directories were recorded when it was made, as far as they still
    /// exist. A later berth command may run in another cgroup than the one that made it (on
    /// cgroup v2 every login session has its own), so it finds the cgroup by its recorded
    /// paths, not by its own position.
    pub fn at(dirs: &[(String, PathBuf)]) -> Result<Option<Cgroup>, CgroupError> {
        let dirs: Vec<(String, PathBuf)> =
            dirs.iter().filter(|(_, d)| d.is_dir()).cloned().collect();
        if dirs.is_empty() {
            return Ok(None);
        }
        Ok(Some(Cgroup {
            version: detect()?,
            dirs,
        }))
    }

    /// Freezes (`pause`) or thaws (`unpause`) every process of the cgroup: `freezer.state`
    /// on v1, `cgroup.freeze` on v2.
    pub fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        match self.version {
            Version::V2 => write(
                &self.dir_of("")?.join("cgroup.freeze"),
                if frozen { "1" } else { "0" },
            ),
            Version::V1 { .. } => write(
                &self.dir_of("freezer")?.join("freezer.state"),
                if frozen { "FROZEN" } else { "THAWED" },
            ),
        }
    }

    /// Whether the cgroup is frozen (or freezing).
    pub fn frozen(&self) -> bool {
        match self.version {
            Version::V2 => self.dir_of("").is_ok_and(|d| {
                fs::read_to_string(d.join("cgroup.freeze")).is_ok_and(|t| t.trim() == "1")
            }),
            Version::V1 { .. } => self.dir_of("freezer").is_ok_and(|d| {
                fs::read_to_string(d.join("freezer.state"))
                    .is_ok_and(|t| t.trim() == "FROZEN" || t.trim() == "FREEZING")
            }),
        }
    }

    /// What the cgroup's processes use now (`berth stats`), from whichever version's files.
    pub fn usage(&self) -> Usage {
        let read = |c: &'static str, f: &str| {
            self.dir_of(c)
                .ok()
                .and_then(|d| fs::read_to_string(d.join(f)).ok())
        };
        let num = |t: Option<String>| t.and_then(|t| t.trim().parse::<u64>().ok());
        let stat = |t: Option<String>, key: &str| {
            t.and_then(|t| {
                t.lines()
                    .filter_map(|l| l.split_once(' '))
                    .find(|(k, _)| *k == key)
                    .and_then(|(_, v)| v.trim().parse::<u64>().ok())
            })
        };
        // Like Docker, memory in use leaves out the page cache the kernel can drop at once.
        match self.version {
            Version::V2 => {
                let current = num(read("", "memory.current")).unwrap_or(0);
                let inactive = stat(read("", "memory.stat"), "inactive_file").unwrap_or(0);
                Usage {
                    cpu_ns: stat(read("", "cpu.stat"), "usage_usec").unwrap_or(0) * 1000,
                    memory: current.saturating_sub(inactive),
                    memory_limit: num(read("", "memory.max")),
                    pids: num(read("", "pids.current")).unwrap_or(0),
                }
            }
            Version::V1 { .. } => {
                let current = num(read("memory", "memory.usage_in_bytes")).unwrap_or(0);
                let inactive =
                    stat(read("memory", "memory.stat"), "total_inactive_file").unwrap_or(0);
                // v1 writes "no limit" as the largest page-aligned number.
                let limit =
                    num(read("memory", "memory.limit_in_bytes")).filter(|l| *l < (1u64 << 62));
                Usage {
                    cpu_ns: num(read("cpuacct", "cpuacct.usage")).unwrap_or(0),
                    memory: current.saturating_sub(inactive),
                    memory_limit: limit,
                    pids: num(read("pids", "pids.current")).unwrap_or(0),
                }
            }
        }
    }

    /// The processes in the cgroup.
    pub fn procs(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for d in self.paths() {
            for l in fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
            {
                if let Ok(p) = l.trim().parse::<u32>()
                    && !out.contains(&p)
                {
                    out.push(p);
                }
            }
        }
        out
    }

    /// Kills every process left in the cgroup and removes its directories (and the
    /// `berth/<project>` parents when they are empty).
    pub fn remove(&self) -> Result<(), CgroupError> {
        // v2's cgroup.kill (Linux 5.14) kills every process of the cgroup in one write, also
        // those forked while it runs; before it, and on v1, each process gets its SIGKILL.
        let kill_file = match self.version {
            Version::V2 => self
                .dirs
                .first()
                .map(|(_, d)| d.join("cgroup.kill"))
                .filter(|f| f.exists()),
            Version::V1 { .. } => None,
        };
        for _ in 0..100 {
            let procs = self.procs();
            if procs.is_empty() {
                break;
            }
            if let Some(f) = &kill_file
                && fs::write(f, "1").is_ok()
            {
                std::thread::sleep(std::time::Duration::from_millis(2));
                continue;
            }
            for p in procs {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        for d in self.paths() {
            let d = &d;
            rmdir_retry(d)?;
            // Up to the `berth` directory: remove the project level if it is now empty. A
            // cgroup directory's link count is 2 plus its children: a parent that still has
            // some is left without trying (every rmdir takes the kernel's cgroup mutex, which
            // the other containers of a `down` are waiting on).
            let mut parent = d.parent();
            for _ in 0..2 {
                let Some(p) = parent else { break };
                if fs::metadata(p).is_ok_and(|m| m.nlink() > 2) {
                    break;
                }
                if p.file_name().is_some_and(|n| n == "berth") {
                    let _ = fs::remove_dir(p);
                    break;
                }
                if fs::remove_dir(p).is_err() {
                    break;
                }
                parent = p.parent();
            }
        }
        Ok(())
    }
}

/// cgroup v2's `io.max` (one line per device, its four rates) and the weights: `io.bfq.weight`
/// takes Compose's 10-1000 as it is where the BFQ scheduler runs; otherwise `io.weight`
/// (1-10000) gets it converted as runc converts it.
fn apply_io_v2(d: &Path, b: &super::spec::Blkio) -> Result<(), CgroupError> {
    let mut devices: Vec<(u32, u32)> = Vec::new();
    for (ma, mi) in b
        .read_bps
        .iter()
        .chain(&b.write_bps)
        .chain(&b.read_iops)
        .chain(&b.write_iops)
        .map(|(ma, mi, _)| (*ma, *mi))
    {
        if !devices.contains(&(ma, mi)) {
            devices.push((ma, mi));
        }
    }
    for (ma, mi) in devices {
        let rate = |list: &[(u32, u32, u64)]| {
            list.iter()
                .find(|(a, i, _)| (*a, *i) == (ma, mi))
                .map(|(_, _, r)| *r)
        };
        let mut line = format!("{ma}:{mi}");
        for (key, list) in [
            ("rbps", &b.read_bps),
            ("wbps", &b.write_bps),
            ("riops", &b.read_iops),
            ("wiops", &b.write_iops),
        ] {
            if let Some(r) = rate(list) {
                line.push_str(&format!(" {key}={r}"));
            }
        }
        write(&d.join("io.max"), &line)?;
    }
    if b.weight.is_none() && b.weight_device.is_empty() {
        return Ok(());
    }
    let (file, convert): (PathBuf, fn(u32) -> u32) = if d.join("io.bfq.weight").exists() {
        (d.join("io.bfq.weight"), |w| w)
    } else if d.join("io.weight").exists() {
        (d.join("io.weight"), |w| {
            1 + (w.clamp(10, 1000) - 10) * 9999 / 990
        })
    } else {
        return Err(CgroupError::Unsupported(
            "`blkio_config` sets a weight, but this kernel has no I/O weight for cgroups (neither io.bfq.weight nor io.weight: the BFQ scheduler is not in use and io.cost is not built in)".into(),
        ));
    };
    if let Some(w) = b.weight {
        write(&file, &format!("default {}", convert(w)))?;
    }
    for (ma, mi, w) in &b.weight_device {
        let line = format!("{ma}:{mi} {}", convert(*w));
        fs::write(&file, &line).map_err(|e| {
            if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                CgroupError::Unsupported(format!(
                    "`blkio_config.weight_device` for {ma}:{mi}: the kernel weighs this disk only when it uses the BFQ scheduler or io.cost is enabled for it (io.cost.qos in the root cgroup)"
                ))
            } else {
                CgroupError::Write {
                    path: file.clone(),
                    value: line.clone(),
                    source: e,
                }
            }
        })?;
    }
    Ok(())
}

/// cgroup v1's `blkio`: the throttle files, one line per device, and the weight in
/// `blkio.weight` (CFQ, before 5.0) or `blkio.bfq.weight` (BFQ).
fn apply_blkio_v1(d: &Path, b: &super::spec::Blkio) -> Result<(), CgroupError> {
    for (file, list) in [
        ("blkio.throttle.read_bps_device", &b.read_bps),
        ("blkio.throttle.write_bps_device", &b.write_bps),
        ("blkio.throttle.read_iops_device", &b.read_iops),
        ("blkio.throttle.write_iops_device", &b.write_iops),
    ] {
        for (ma, mi, r) in list {
            write(&d.join(file), &format!("{ma}:{mi} {r}"))?;
        }
    }
    if b.weight.is_none() && b.weight_device.is_empty() {
        return Ok(());
    }
    let prefix = if d.join("blkio.bfq.weight").exists() {
        "blkio.bfq.weight"
    } else if d.join("blkio.weight").exists() {
        "blkio.weight"
    } else {
        return Err(CgroupError::Unsupported(
            "`blkio_config` sets a weight, but this kernel's blkio controller has no weight (neither blkio.weight nor blkio.bfq.weight: no disk uses the BFQ scheduler)".into(),
        ));
    };
    if let Some(w) = b.weight {
        write(&d.join(prefix), &w.to_string())?;
    }
    for (ma, mi, w) in &b.weight_device {
        write(
            &d.join(format!("{prefix}_device")),
            &format!("{ma}:{mi} {w}"),
        )?;
    }
    Ok(())
}

/// `cpu_shares` (v1's 2-262144, default 1024) as v2's `cpu.weight` (1-10000, default 100), by
/// the curve runc 1.3 and crun 1.22 use: it maps the ends to the ends and the default to the
/// default, where the older linear formula made 1024 a weight of 39 (a container with the
/// default shares got 39 % of its fair share beside one without).
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares <= 2 {
        return 1;
    }
    if shares >= 262_144 {
        return 10_000;
    }
    let l = (shares as f64).log2();
    let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
    // Rounded to 1e-9 first: 1024 must come out 100, not 101 from 100.00000000000003.
    let w = (10f64.powf(exponent) * 1e9).round() / 1e9;
    (w.ceil() as u64).clamp(1, 10_000)
}

fn write_if_present(path: &Path, value: &str) -> Result<(), CgroupError> {
    if path.exists() {
        write(path, value)
    } else {
        Ok(())
    }
}

/// Creates a directory; true when it did not exist.
fn mkdir(p: &Path) -> Result<bool, CgroupError> {
    match fs::create_dir(p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(CgroupError::Create {
            path: p.to_path_buf(),
            source: e,
        }),
    }
}

fn rmdir_retry(p: &Path) -> Result<(), CgroupError> {
    // A cgroup is busy for a moment after its last process died.
    for _ in 0..50 {
        match fs::remove_dir(p) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) => {
                return Err(CgroupError::Remove {
                    path: p.to_path_buf(),
                    source: e,
                });
            }
        }
    }
    Err(CgroupError::Remove {
        path: p.to_path_buf(),
        source: std::io::Error::from_raw_os_error(libc::EBUSY),
    })
}

fn enable_v2_controllers(dir: &Path) -> Result<(), CgroupError> {
    let available = read(&dir.join("cgroup.controllers"))?;
    let want: Vec<String> = ["cpu", "memory", "pids", "cpuset", "io"]
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if want.is_empty() {
        return Ok(());
    }
    let f = dir.join("cgroup.subtree_control");
    fs::write(&f, want.join(" ")).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) {
            CgroupError::Unsupported(format!(
                "cannot delegate controllers below {}: the cgroup holds processes (cgroup v2's no-internal-process rule); run berth from a cgroup of its own, e.g. `systemd-run --scope -p Delegate=yes berth ...`",
                dir.display()
            ))
        } else {
            CgroupError::Write {
                path: f.clone(),
                value: want.join(" "),
                source: e,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::shares_to_weight;

    #[test]
    fn cpu_shares_map_to_weights_as_runc_maps_them() {
        // The ends, the default, and points between (runc 1.3: 512 -> 59).
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 100);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(512), 59);
        assert_eq!(shares_to_weight(2048), 174);
        assert_eq!(shares_to_weight(100_000), 4_340);
    }
}
