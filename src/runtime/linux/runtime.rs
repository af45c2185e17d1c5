//! `LinuxRuntime`: the `Runtime` trait on the real kernel. Each container is a directory under
//! `<state root>/containers/<name>/` holding its record (`container.json`: what it is, how it
//! was configured, its init's pid and start time), its writable layers, its log and the exit
//! status its init wrote. `observe` reads those back and checks the kernel, so a berth that
//! restarts adopts what is running instead of starting it twice.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::cgroup::Cgroup;
use super::launch::launch;
use super::spec::{LaunchSpec, Limits, Rootfs};
use crate::image::ImageStore;
use crate::plan::{Observed, ObservedContainer, State};
use crate::runtime::lower::{self, Accounts, NetConfig, hosts_file, resolv_file};
use crate::runtime::{
    ContainerSpec, ExecOptions, HealthSpec, Info, Inspect, Runtime, RuntimeError, Stats,
};

/// What berth remembers about one container.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    project: String,
    service: String,
    index: u32,
    name: String,
    config_hash: String,
    launch: LaunchSpec,
    limits: Limits,
    /// The cgroup below `berth/`, `<project>/<name>`.
    cgroup: String,
    stop_signal: Option<String>,
    /// The image id (None for `image: host`): an image in use cannot be removed.
    #[serde(default)]
    image_id: Option<String>,
    pid: Option<i32>,
    /// The init's start time (field 22 of /proc/<pid>/stat), so a recycled pid is not taken for it.
    starttime: Option<u64>,
    /// The effective health check (the file's over the image's).
    #[serde(default)]
    health: Option<HealthSpec>,
    /// When the record was made and when the container last started (seconds since the epoch).
    #[serde(default)]
    created_at: u64,
    #[serde(default)]
    started_at: Option<u64>,
    /// The image as the file names it.
    #[serde(default)]
    image: Option<String>,
    /// The cgroup's directories (controller, path), recorded when it was made.
    #[serde(default)]
    cgroup_dirs: Vec<(String, PathBuf)>,
    /// A one-off container (`berth run`): not part of the project's desired state.
    #[serde(default)]
    oneoff: bool,
    /// How the container is networked.
    #[serde(default)]
    net: NetConfig,
    /// Its volumes, bind mounts and tmpfs, as the file asks (made ready at each start).
    #[serde(default)]
    mounts: Vec<crate::disk::MountSpec>,
    /// `storage_opt.size`: the size of its writable layer's own file system.
    #[serde(default)]
    storage: Option<u64>,
    /// `post_start` and `pre_stop`.
    #[serde(default)]
    hooks: crate::runtime::lower::config::Hooks,
}

#[derive(Debug, Clone)]
pub struct LinuxRuntime {
    root: PathBuf,
    images: ImageStore,
}

/// A failed step of container `container`, its cause kept whole (a message, or the typed error).
fn step(
    container: &str,
    step: &'static str,
    e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> RuntimeError {
    RuntimeError::Step {
        container: container.to_string(),
        step,
        cause: crate::runtime::Cause::new(e),
    }
}

pub(super) fn starttime(pid: i32) -> Option<u64> {
    crate::sys::process_starttime(pid)
}

impl LinuxRuntime {
    /// A runtime whose state lives under `root` (berth's state root, `BERTH_ROOT`).
    pub fn new(root: &Path) -> Result<LinuxRuntime, RuntimeError> {
        if let Some(why) = super::kernel::missing() {
            return Err(RuntimeError::Kernel(why));
        }
        fs::create_dir_all(root.join("containers"))
            .map_err(|e| step("-", "create state root", e))?;
        let images = ImageStore::open(root).map_err(|e| step("-", "open image store", e))?;
        Ok(LinuxRuntime {
            root: root.to_path_buf(),
            images,
        })
    }
    fn event(&self, r: &Record, action: &str, attrs: &[(&str, String)]) {
        crate::state::append_event(&self.root, &r.project, action, &r.name, &r.service, attrs);
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join("containers").join(name)
    }

    fn read(&self, name: &str) -> Result<Record, RuntimeError> {
        let text = fs::read_to_string(self.dir(name).join("container.json"))
            .map_err(|_| RuntimeError::NotFound(name.to_string()))?;
        serde_json::from_str(&text).map_err(|e| step(name, "read container record", e))
    }

    fn write(&self, r: &Record) -> Result<(), RuntimeError> {
        let text =
            serde_json::to_vec_pretty(r).map_err(|e| step(&r.name, "write container record", e))?;
        crate::sys::atomic_write(&self.dir(&r.name).join("container.json"), &text)
            .map_err(|e| step(&r.name, "write container record", e))
    }

    fn alive(r: &Record) -> bool {
        match (r.pid, r.starttime) {
            (Some(p), Some(st)) => starttime(p) == Some(st),
            _ => false,
        }
    }

    /// Turns a service definition and its image into what the setup process needs.
    fn prepare(&self, spec: &ContainerSpec) -> Result<Record, RuntimeError> {
        let svc = &spec.definition;
        let name = &spec.name;
        let image = svc.image.as_deref().unwrap_or("host");
        let (rootfs, config, passwd_root, image_id) = if image == "host" {
            (
                Rootfs::Host,
                crate::image::ImageConfig::default(),
                vec![PathBuf::from("/")],
                None,
            )
        } else {
            let img = self
                .images
                .resolve(image)
                .map_err(|e| step(name, "resolve image", e))?;
            let mut roots: Vec<PathBuf> = img.layers.iter().rev().cloned().collect();
            let rootfs = if img
                .config
                .labels
                .get(super::spec::HOST_BASE_LABEL)
                .is_some_and(|v| v == "host")
            {
                roots.push(PathBuf::from("/"));
                Rootfs::HostLayers(img.layers.clone())
            } else {
                // The init layer on top: the root's mount points, made once for every container.
                let init = super::rootfs::init_layer(&self.root)
                    .map_err(|e| step(name, "create the init layer", e))?;
                Rootfs::Layers(img.layers.iter().cloned().chain([init]).collect())
            };
            (rootfs, img.config.clone(), roots, Some(img.id.clone()))
        };
        let c = lower::container(spec, &config, &accounts(&passwd_root), &HostDevices).map_err(
            |e| {
                let step_name = e.step;
                step(name, step_name, e.message)
            },
        )?;
        let mut process = c.process;
        if c.confinement.seccomp {
            process
                .default_seccomp()
                .map_err(|e| step(name, "compile seccomp filter", e))?;
        }
        process.apparmor =
            super::apparmor::choose(c.confinement.apparmor.as_deref(), process.privileged)
                .map_err(|e| step(name, "choose the AppArmor profile", e))?;
        Ok(Record {
            project: spec.project.clone(),
            service: spec.service.clone(),
            index: spec.index,
            name: name.clone(),
            config_hash: spec.config_hash.clone(),
            launch: LaunchSpec {
                name: name.clone(),
                // `uts: host`: the host's own name (berth sets none then).
                hostname: c.hostname.unwrap_or_else(|| {
                    nix::unistd::gethostname()
                        .ok()
                        .and_then(|h| h.into_string().ok())
                        .unwrap_or_else(|| name.clone())
                }),
                domainname: c.domainname,
                rootfs,
                dir: self.dir(name),
                read_only: c.read_only,
                cgroups: Vec::new(),
                own_network: c.own_network,
                netns: None,
                hosts: None,
                resolv: None,
                shm_size: c.shm_size,
                log: Some(c.log),
                mounts: Vec::new(),
                rw_device: None,
                devices: c.devices,
                host_ipc: c.host_ipc,
                host_uts: c.host_uts,
                sysctls: c.sysctls,
                process,
            },
            limits: c.limits,
            cgroup: format!("{}/{}", spec.project, name),
            stop_signal: c.stop_signal,
            image_id,
            pid: None,
            starttime: None,
            health: c.health,
            created_at: now_unix(),
            started_at: None,
            image: Some(image.to_string()),
            cgroup_dirs: Vec::new(),
            oneoff: spec.oneoff,
            net: c.net,
            mounts: c.mounts,
            storage: c.storage,
            hooks: c.hooks,
        })
    }
}

/// The accounts of a container's root: /etc/passwd and /etc/group of the first of `roots`
/// (its layers, top first) that has each.
fn accounts(roots: &[PathBuf]) -> Accounts {
    let read = |f: &str| {
        roots
            .iter()
            .find_map(|r| fs::read_to_string(r.join(f)).ok())
            .unwrap_or_default()
    };
    Accounts {
        passwd: read("etc/passwd"),
        group: read("etc/group"),
    }
}

/// Device nodes as the host's `stat` and /sys see them.
struct HostDevices;

impl lower::DeviceNodes for HostDevices {
    fn node(&self, path: &str) -> std::io::Result<lower::Node> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let md = fs::metadata(path)?;
        let t = md.file_type();
        let kind = if t.is_block_device() {
            Some(super::devices::Kind::Block)
        } else if t.is_char_device() {
            Some(super::devices::Kind::Char)
        } else {
            None
        };
        let (major, minor) = (
            nix::sys::stat::major(md.rdev()) as u32,
            nix::sys::stat::minor(md.rdev()) as u32,
        );
        // A partition's /sys entry sits in its disk's: /sys/dev/block/M:m -> .../sda/sda1.
        let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
        let partition_of = (kind == Some(super::devices::Kind::Block)
            && sys.join("partition").exists())
        .then(|| {
            fs::canonicalize(&sys)
                .ok()
                .and_then(|p| p.parent().and_then(|d| d.file_name()).map(|n| n.to_owned()))
                .map(|n| format!("/dev/{}", n.to_string_lossy()))
                .unwrap_or_else(|| "the whole disk".into())
        });
        Ok(lower::Node {
            kind,
            major,
            minor,
            partition_of,
        })
    }
}

fn signal_by_name(s: Option<&str>) -> nix::sys::signal::Signal {
    use std::str::FromStr;
    let Some(s) = s else {
        return nix::sys::signal::Signal::SIGTERM;
    };
    let n = s.trim().to_ascii_uppercase();
    let n = if n.starts_with("SIG") {
        n
    } else {
        format!("SIG{n}")
    };
    nix::sys::signal::Signal::from_str(&n).unwrap_or(nix::sys::signal::Signal::SIGTERM)
}

/// Bytes the files under `dir` take on disk (allocated blocks; hard links counted once), not
/// following symlinks or crossing into other file systems.
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = fs::symlink_metadata(dir) else {
        return 0;
    };
    let dev = top.dev();
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            if m.nlink() > 1 && !m.is_dir() && !seen.insert(m.ino()) {
                continue;
            }
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

impl Inspect for LinuxRuntime {
    type Process = super::launch::Exec;

    /// Details of one container, for `ps`, `logs` and `exec`.
    fn info(&self, name: &str) -> Result<Info, RuntimeError> {
        let r = self.read(name)?;
        let state = self.state_of(&r);
        let dir = self.dir(name);
        let finished_at = fs::metadata(dir.join("exit"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        Ok(Info {
            name: r.name.clone(),
            project: r.project.clone(),
            service: r.service.clone(),
            index: r.index,
            image: r.image.clone().unwrap_or_else(|| "host".into()),
            command: r.launch.process.args.clone(),
            created_at: r.created_at,
            started_at: r.started_at,
            pid: r.pid.filter(|_| state == State::Running),
            state,
            finished_at,
            dir,
        })
    }

    /// Sends `sig` to the container's init, which forwards it to the service (`berth kill`).
    fn signal(&self, name: &str, sig: nix::sys::signal::Signal) -> Result<(), RuntimeError> {
        let r = self.read(name)?;
        let pid = r
            .pid
            .filter(|_| Self::alive(&r))
            .ok_or_else(|| step(name, "kill", "the container is not running"))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
            .map_err(|e| step(name, "kill", e))?;
        self.event(&r, "kill", &[("signal", sig.as_str().to_string())]);
        Ok(())
    }

    /// Freezes or thaws every process of the container (`pause` / `unpause`).
    fn freeze(&self, name: &str, frozen: bool) -> Result<(), RuntimeError> {
        let r = self.read(name)?;
        if !Self::alive(&r) {
            return Err(step(name, "pause", "the container is not running"));
        }
        let cg = Self::cgroup_of(&r)
            .ok_or_else(|| step(name, "pause", "the container has no cgroup"))?;
        cg.freeze(frozen).map_err(|e| step(name, "pause", e))?;
        self.event(&r, if frozen { "pause" } else { "unpause" }, &[]);
        Ok(())
    }

    /// Starts a process in the running container `name` with these descriptors as its stdio.
    fn exec(
        &self,
        name: &str,
        opts: &ExecOptions,
        stdio: [std::os::fd::OwnedFd; 3],
    ) -> Result<super::launch::Exec, RuntimeError> {
        let spec = self.exec_spec(name, opts)?;
        if let Ok(r) = self.read(name) {
            self.event(&r, "exec_start", &[("command", opts.argv.join(" "))]);
        }
        let [i, o, e] = stdio;
        super::launch::exec(&spec, i, o, e).map_err(|e| step(name, "exec", e))
    }

    /// What the running container `name` uses now: its cgroup's counters, the bytes its
    /// network interfaces moved (outside `lo`), and the size of its writable layer.
    fn stats(&self, name: &str) -> Result<Stats, RuntimeError> {
        let r = self.read(name)?;
        let usage = Self::cgroup_of(&r).map(|c| c.usage()).unwrap_or_default();
        let (mut rx, mut tx) = (0, 0);
        if r.launch.own_network
            && let Some(pid) = r.pid.filter(|_| Self::alive(&r))
        {
            // /proc/<pid>/net/dev is the device table of that process's network namespace.
            let dev = fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap_or_default();
            for line in dev.lines().skip(2) {
                let Some((ifname, rest)) = line.split_once(':') else {
                    continue;
                };
                if ifname.trim() == "lo" {
                    continue;
                }
                let f: Vec<u64> = rest
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                rx += f.first().copied().unwrap_or(0);
                tx += f.get(8).copied().unwrap_or(0);
            }
        }
        Ok(Stats {
            usage,
            net_rx: rx,
            net_tx: tx,
            net_rx_limit: r.net.ingress,
            net_tx_limit: r.net.egress,
            // The writable layer is `upper/`, plus, for `image: host`, what is written
            // beside the OS overlays in the root directory itself (/tmp, /var, ...).
            // With `storage_opt.size`, all of it is in `rw.img`.
            disk: disk_usage(&r.launch.dir.join("upper"))
                + disk_usage(&r.launch.dir.join("root"))
                + disk_usage(&r.launch.dir.join("rw.img")),
        })
    }

    /// The host pids of the container's processes.
    fn processes(&self, name: &str) -> Result<Vec<u32>, RuntimeError> {
        let r = self.read(name)?;
        Ok(Self::cgroup_of(&r).map(|cg| cg.procs()).unwrap_or_default())
    }

    fn images(&self) -> &ImageStore {
        &self.images
    }

    fn images_in_use(&self) -> std::collections::BTreeSet<String> {
        let Ok(rd) = fs::read_dir(self.root.join("containers")) else {
            return Default::default();
        };
        rd.flatten()
            .filter_map(|e| self.read(&e.file_name().to_string_lossy()).ok())
            .filter_map(|r| r.image_id)
            .collect()
    }
}

impl LinuxRuntime {
    /// What a process started in the running container `name` gets: the service's process
    /// with `opts` applied.
    pub(crate) fn exec_spec(
        &self,
        name: &str,
        opts: &ExecOptions,
    ) -> Result<super::spec::ExecSpec, RuntimeError> {
        let r = self.read(name)?;
        let (Some(pid), Some(starttime)) = (r.pid, r.starttime) else {
            return Err(step(name, "exec", "the container is not running"));
        };
        if !Self::alive(&r) {
            return Err(step(name, "exec", "the container is not running"));
        }
        let cg = Self::cgroup_of(&r);
        if cg.as_ref().is_some_and(|c| c.frozen()) {
            return Err(step(
                name,
                "exec",
                "the container is paused; `berth unpause` it first",
            ));
        }
        let mut p = r.launch.process.clone();
        p.args = opts.argv.clone();
        for e in &opts.env {
            let key = e.split('=').next().unwrap_or(e);
            p.env.retain(|x| x.split('=').next() != Some(key));
            p.env.push(e.clone());
        }
        if let Some(u) = &opts.user {
            // The container's own files first (its writable layer), then its image's.
            let mut roots = vec![r.launch.dir.join("upper")];
            match &r.launch.rootfs {
                Rootfs::Host => roots.push(PathBuf::from("/")),
                Rootfs::Layers(l) => roots.extend(l.iter().rev().cloned()),
                Rootfs::HostLayers(l) => {
                    roots.extend(l.iter().rev().cloned());
                    roots.push(PathBuf::from("/"));
                }
            }
            let (uid, gid, groups) = lower::resolve_user(u, &accounts(&roots))
                .map_err(|e| step(name, "resolve user", e))?;
            (p.uid, p.gid, p.groups) = (uid, gid, groups);
        }
        if let Some(w) = &opts.workdir {
            p.cwd = w.clone();
        }
        p.tty = opts.tty;
        p.stdin_open = false;
        if opts.tty && !p.env.iter().any(|e| e.starts_with("TERM=")) {
            p.env.push("TERM=xterm".into());
        }
        if opts.privileged {
            p.privileged = true;
            p.seccomp = None;
        }
        Ok(super::spec::ExecSpec {
            name: name.to_string(),
            pid,
            starttime,
            cgroups: cg.map(|c| c.paths()).unwrap_or_default(),
            own_network: r.launch.own_network,
            process: p,
        })
    }

    /// The state a container's record and the kernel show.
    /// The container's cgroup, found by its recorded paths (or, for records made before the
    /// paths were kept, by its name below this process's cgroup).
    fn cgroup_of(r: &Record) -> Option<Cgroup> {
        if r.cgroup_dirs.is_empty() {
            Cgroup::open(&r.cgroup).ok().flatten()
        } else {
            Cgroup::at(&r.cgroup_dirs).ok().flatten()
        }
    }

    fn state_of(&self, r: &Record) -> State {
        if Self::alive(r) {
            if Self::cgroup_of(r).is_some_and(|cg| cg.frozen()) {
                return State::Paused;
            }
            return State::Running;
        }
        match fs::read_to_string(self.dir(&r.name).join("exit"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            // 137 is SIGKILL; the cgroup says whether the OOM killer sent it.
            Some(137) if Self::cgroup_of(r).is_some_and(|cg| cg.oom_kills() > 0) => {
                State::OomKilled
            }
            Some(code) => State::Exited(code),
            // No status: the init itself was killed; the OOM killer may have chosen it.
            None if r.pid.is_some() => {
                if Self::cgroup_of(r).is_some_and(|cg| cg.oom_kills() > 0) {
                    State::OomKilled
                } else {
                    State::Exited(-1)
                }
            }
            None => State::Created,
        }
    }

    fn observe_sync(&self, project: &str) -> Observed {
        let mut out = Observed::default();
        let Ok(rd) = fs::read_dir(self.root.join("containers")) else {
            return out;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(r) = self.read(&name) else { continue };
            if r.project != project {
                continue;
            }
            let state = self.state_of(&r);
            out.containers.push(ObservedContainer {
                name: r.name,
                service: r.service,
                index: r.index,
                config_hash: r.config_hash,
                state,
                oneoff: r.oneoff,
                pid: r.pid,
            });
        }
        out.containers.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn create_sync(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let dir = self.dir(&spec.name);
        if dir.join("container.json").exists() {
            return Err(RuntimeError::Exists(spec.name.clone()));
        }
        let mut record = self.prepare(spec)?;
        fs::create_dir_all(&dir).map_err(|e| step(&spec.name, "create container directory", e))?;
        // Secrets and configs are kept with the container, and mounted from there.
        let grants = crate::disk::secrets::write(&dir, &spec.granted)
            .map_err(|e| step(&spec.name, "write secrets and configs", e))?;
        record.mounts.extend(grants);
        self.write(&record)?;
        self.event(
            &record,
            "create",
            &[("image", record.image.clone().unwrap_or_default())],
        );
        Ok(())
    }

    /// Readies the container's network before its start: leases its addresses, prepares its
    /// network namespace (returned: it must stay open until setup has joined it), and writes
    /// its hosts and resolv.conf into the launch spec.
    fn network_for(&self, r: &mut Record) -> Result<Option<std::os::fd::OwnedFd>, RuntimeError> {
        let name = r.name.clone();
        r.launch.netns = None;
        if let Some(target) = r.net.join.clone() {
            let other = self.read(&target).map_err(|_| {
                step(
                    &name,
                    "join network",
                    format!("no container {target} to share the network of"),
                )
            })?;
            let pid = other
                .pid
                .filter(|_| Self::alive(&other))
                .ok_or_else(|| step(&name, "join network", format!("{target} is not running")))?;
            r.launch.netns = Some(PathBuf::from(format!("/proc/{pid}/ns/net")));
            // The same files as the container whose network this one shares.
            let [_, hosts, resolv] = super::rootfs::etc_contents(&other.launch);
            r.launch.hosts = Some(hosts);
            r.launch.resolv = Some(resolv);
            return Ok(None);
        }
        if !r.launch.own_network || r.net.networks.is_empty() {
            if r.launch.own_network {
                r.launch.hosts = Some(hosts_file(
                    &r.launch.hostname,
                    r.launch.domainname.as_deref(),
                    None,
                    &r.net.extra_hosts,
                ));
            } else if !r.net.extra_hosts.is_empty() {
                // `network_mode: host` (a build's RUN, too): the host's own /etc/hosts with
                // the extra entries, as Docker gives it.
                let mut text = fs::read_to_string("/etc/hosts").unwrap_or_default();
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                for e in &r.net.extra_hosts {
                    if let Some((h, ip)) = e.split_once('=') {
                        let ip = if ip == "host-gateway" {
                            "127.0.0.1"
                        } else {
                            ip
                        };
                        text.push_str(&format!("{ip}\t{h}\n"));
                    }
                }
                r.launch.hosts = Some(text);
            }
            return Ok(None);
        }
        let joined = crate::net::join(
            &self.root,
            &name,
            &r.service,
            &r.launch.hostname,
            &r.net.networks,
        )
        .map_err(|e| step(&name, "join networks", e))?;
        let shaping = crate::net::link::Shaping {
            egress: r.net.egress,
            ingress: r.net.ingress,
            burst: r.net.burst,
        };
        let fd = crate::net::link::prepare_netns(&joined.ifaces, shaping)
            .map_err(|e| step(&name, "prepare network", e))?;
        use std::os::fd::AsRawFd;
        r.launch.netns = Some(PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            fd.as_raw_fd()
        )));
        r.launch.hosts = Some(hosts_file(
            &r.launch.hostname,
            r.launch.domainname.as_deref(),
            joined.addresses.first().copied(),
            &r.net.extra_hosts,
        ));
        r.launch.resolv = Some(resolv_file(&joined.nameservers, &r.net));
        Ok(Some(fd))
    }

    fn start_sync(&self, name: &str) -> Result<(), RuntimeError> {
        let mut r = self.read(name)?;
        if Self::alive(&r) {
            return Ok(());
        }
        let dir = self.dir(name);
        // A restart keeps the writable layer (it is dropped only on recreate, as Docker does);
        // the previous run's exit status goes.
        let _ = fs::remove_file(dir.join("exit"));
        let cg =
            Cgroup::create(&r.cgroup, &r.limits).map_err(|e| step(name, "create cgroup", e))?;
        r.launch.cgroups = cg.paths();
        r.cgroup_dirs = cg.dirs.clone();
        // The service's output goes to container.log through init; what the setup process
        // itself might print (nothing, normally) goes to setup.log.
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("setup.log"))
            .map_err(|e| step(name, "open log", e))?;
        // Volumes and bind sources are made ready at each start (a volume removed by hand
        // comes back empty, a bind source must still be there).
        let (mounts, held) = crate::disk::prepare(&self.root, &r.mounts).map_err(|e| {
            let _ = cg.remove();
            step(name, "prepare mounts", e)
        })?;
        r.launch.mounts = mounts;
        let mut held = held;
        r.launch.rw_device = None;
        if let Some(size) = r.storage {
            // Made on first start, kept across restarts (the writable layer is), removed with
            // the container's directory.
            let img = dir.join("rw.img");
            let sized = || -> Result<_, crate::disk::DiskError> {
                if !img.exists() {
                    crate::disk::private::make_ext4(name, &img, size)?;
                }
                crate::disk::private::attach(name, &img)
            };
            let (dev, fd) = sized().map_err(|e| {
                let _ = cg.remove();
                step(name, "size the writable layer", e)
            })?;
            held.push(fd);
            r.launch.rw_device = Some(dev);
        }
        let netns = self.network_for(&mut r).inspect_err(|_| {
            let _ = cg.remove();
        })?;
        let running = launch(&r.launch, None, Some(log)).map_err(|e| {
            let _ = cg.remove();
            step(name, "start", e)
        })?;
        // Setup has joined it; the namespace lives on with the container's processes. The
        // container has mounted its disks: their loop devices now live as long as it does.
        drop(netns);
        drop(held);
        r.pid = Some(running.pid);
        r.starttime = starttime(running.pid);
        r.started_at = Some(now_unix());
        self.write(&r)?;
        self.event(&r, "start", &[]);
        self.run_hooks(&r, "post_start", &r.hooks.post_start)
    }

    /// Runs lifecycle hooks in the running container, in order, each as `exec` runs a command;
    /// their output goes where the service's does (into its log). The first that cannot run or
    /// exits non-zero ends the run: its error names the hook and the command.
    fn run_hooks(
        &self,
        r: &Record,
        which: &'static str,
        hooks: &[crate::runtime::lower::config::Hook],
    ) -> Result<(), RuntimeError> {
        for (i, h) in hooks.iter().enumerate() {
            let opts = ExecOptions {
                argv: h.argv.clone(),
                env: h.env.clone(),
                user: h.user.clone(),
                workdir: h.workdir.clone(),
                tty: false,
                privileged: h.privileged,
            };
            let spec = self.exec_spec(&r.name, &opts)?;
            let [i_, o, e] = self.hook_stdio(r)?;
            self.event(r, "exec_start", &[("command", h.argv.join(" "))]);
            let code = super::launch::exec(&spec, i_, o, e)
                .and_then(|ex| ex.wait())
                .map_err(|e| step(&r.name, which, e))?;
            self.event(r, "exec_die", &[("exitCode", code.to_string())]);
            if code != 0 {
                return Err(step(
                    &r.name,
                    which,
                    format!(
                        "hook {} (`{}`) exited with status {code}",
                        i + 1,
                        h.argv.join(" ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A hook's stdio: nothing to read; its output to the service's own stdout and stderr (the
    /// pipes, or terminal, that init logs), found through the service process (init's child).
    fn hook_stdio(&self, r: &Record) -> Result<[std::os::fd::OwnedFd; 3], RuntimeError> {
        let null = || -> Result<std::os::fd::OwnedFd, RuntimeError> {
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map(Into::into)
                .map_err(|e| step(&r.name, "open /dev/null", e))
        };
        let service = r.pid.and_then(|p| {
            fs::read_to_string(format!("/proc/{p}/task/{p}/children"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse::<i32>()
                .ok()
        });
        let out = |fd: u32| -> Result<std::os::fd::OwnedFd, RuntimeError> {
            match service.and_then(|s| {
                fs::OpenOptions::new()
                    .write(true)
                    .open(format!("/proc/{s}/fd/{fd}"))
                    .ok()
            }) {
                Some(f) => Ok(f.into()),
                None => null(),
            }
        };
        Ok([null()?, out(1)?, out(2)?])
    }

    fn remove_sync(&self, name: &str) -> Result<(), RuntimeError> {
        let r = self.read(name)?;
        if Self::alive(&r) {
            return Err(step(
                name,
                "remove",
                "the container is running; stop it first",
            ));
        }
        if let Some(cg) = Self::cgroup_of(&r) {
            cg.remove().map_err(|e| step(name, "remove cgroup", e))?;
        }
        crate::net::leave(&self.root, name).map_err(|e| step(name, "leave networks", e))?;
        fs::remove_dir_all(self.dir(name))
            .map_err(|e| step(name, "remove container directory", e))?;
        self.event(&r, "destroy", &[]);
        Ok(())
    }

    /// Runs blocking work (file system, the launch handshake) on tokio's blocking pool, so the
    /// reconciler's timers and other services' steps keep going meanwhile.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&LinuxRuntime) -> Result<T, RuntimeError> + Send + 'static,
    ) -> Result<T, RuntimeError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| step("-", "runtime task", e))?
    }

    /// Resolves when the init `pid` (checked against the record's start time) has ended; a
    /// pidfd makes this work for containers this process did not start (adoption).
    async fn exited(&self, r: &Record) -> Result<(), RuntimeError> {
        let Some(pid) = r.pid else { return Ok(()) };
        let Some(raw) = rustix::process::Pid::from_raw(pid) else {
            return Ok(());
        };
        let fd = match rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(_) => return Ok(()),
        };
        // The pid may have been recycled between the record and the pidfd: check after opening.
        if !Self::alive(r) {
            return Ok(());
        }
        // SAFETY: `fd` is an OwnedFd moved into the AsyncFd, so it stays open and the same
        // descriptor for the AsyncFd's whole life.
        let afd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        }
        .map_err(|e| step(&r.name, "wait (pidfd)", e.to_string()))?;
        let _ = afd
            .readable()
            .await
            .map_err(|e| step(&r.name, "wait (pidfd)", e))?;
        // Reap it if it is our child (this process started it); not our child: nothing to do.
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
        Ok(())
    }
}

/// Most of a probe's output that is kept (Docker keeps 4 KiB).
const PROBE_OUTPUT: usize = 4096;

/// Runs one health probe: its exit status and the start of its output. A probe that outlives
/// `timeout` is killed and fails (-1, as Docker reports it); one whose command cannot be
/// executed fails with 127 and the reason as its output.
fn run_probe(
    name: &str,
    spec: &super::spec::ExecSpec,
    timeout: Duration,
) -> Result<(i32, String), RuntimeError> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::io::Read;
    use std::os::fd::AsFd;
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
        .map_err(|e| step(name, "health probe", e))?;
    // The write end must block for the probe (only the read end is ours to poll).
    let _ = nix::fcntl::fcntl(
        &w,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    );
    let null: std::os::fd::OwnedFd = fs::File::open("/dev/null")
        .map_err(|e| step(name, "health probe", e))?
        .into();
    let w2 = w.try_clone().map_err(|e| step(name, "health probe", e))?;
    let ex = match super::launch::exec(spec, null, w, w2) {
        Ok(ex) => ex,
        Err(super::launch::LaunchError::Setup { source, .. })
            if source.step.starts_with("exec") || source.step == "chdir to working_dir" =>
        {
            return Ok((127, source.to_string()));
        }
        Err(e) => return Err(step(name, "health probe", e)),
    };
    let mut out = Vec::new();
    let reader = fs::File::from(r);
    let drain = |out: &mut Vec<u8>| {
        let mut buf = [0u8; 4096];
        while let Ok(n) = (&reader).read(&mut buf) {
            if n == 0 {
                break;
            }
            let room = PROBE_OUTPUT.saturating_sub(out.len());
            out.extend_from_slice(&buf[..n.min(room)]);
        }
    };
    let deadline = std::time::Instant::now() + timeout;
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            timed_out = true;
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(ex.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            break;
        }
        let ms = u16::try_from(left.as_millis().min(1000)).unwrap_or(1000);
        let (done, output) = {
            let mut fds = [
                PollFd::new(ex.status_fd(), PollFlags::POLLIN),
                PollFd::new(reader.as_fd(), PollFlags::POLLIN),
            ];
            let _ = poll(&mut fds, PollTimeout::from(ms));
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]))
        };
        if output {
            drain(&mut out);
        }
        if done {
            break;
        }
    }
    let code = ex.wait().map_err(|e| step(name, "health probe", e))?;
    drain(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    if timed_out {
        return Ok((
            -1,
            format!("the check ran longer than its timeout ({timeout:?})"),
        ));
    }
    Ok((code, text))
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Runtime for LinuxRuntime {
    async fn observe(&self, project: &str) -> Result<Observed, RuntimeError> {
        let project = project.to_string();
        self.blocking(move |rt| Ok(rt.observe_sync(&project))).await
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let spec = spec.clone();
        self.blocking(move |rt| rt.create_sync(&spec)).await
    }

    async fn start(&self, name: &str) -> Result<(), RuntimeError> {
        let name = name.to_string();
        self.blocking(move |rt| rt.start_sync(&name)).await
    }

    async fn stop(&self, name: &str, grace: Duration) -> Result<(), RuntimeError> {
        let r = self.read(name)?;
        let Some(pid) = r.pid.filter(|_| Self::alive(&r)) else {
            return Ok(());
        };
        let npid = nix::unistd::Pid::from_raw(pid);
        // A paused container gets its signal only once it is thawed.
        if let Some(cg) = Self::cgroup_of(&r)
            && cg.frozen()
        {
            let _ = cg.freeze(false);
        }
        // `pre_stop` hooks, before the stop signal (not with `-t 0`: no grace for anything).
        if !grace.is_zero() && !r.hooks.pre_stop.is_empty() {
            let (rt, rec) = (self.clone(), r.clone());
            let ran = tokio::task::spawn_blocking(move || {
                rt.run_hooks(&rec, "pre_stop", &rec.hooks.pre_stop)
            })
            .await;
            if let Ok(Err(e)) = ran {
                self.event(&r, "hook_failed", &[("error", e.to_string())]);
            }
        }
        // No grace (`-t 0`): the stop signal could not be acted on anyway, so SIGKILL alone.
        let sig = if grace.is_zero() {
            nix::sys::signal::Signal::SIGKILL
        } else {
            signal_by_name(r.stop_signal.as_deref())
        };
        let _ = nix::sys::signal::kill(npid, sig);
        self.event(&r, "kill", &[("signal", sig.as_str().to_string())]);
        if sig == nix::sys::signal::Signal::SIGKILL {
            self.exited(&r).await?;
        } else if tokio::time::timeout(grace, self.exited(&r)).await.is_err() {
            // SIGKILL of the init ends every process of the container's PID namespace.
            let _ = nix::sys::signal::kill(npid, nix::sys::signal::Signal::SIGKILL);
            self.event(&r, "kill", &[("signal", "SIGKILL".to_string())]);
            self.exited(&r).await?;
        }
        self.event(&r, "stop", &[]);
        Ok(())
    }

    async fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        let name = name.to_string();
        self.blocking(move |rt| rt.remove_sync(&name)).await
    }

    async fn wait(&self, name: &str) -> Result<State, RuntimeError> {
        let r = self.read(name)?;
        self.exited(&r).await?;
        Ok(self.state_of(&r))
    }

    fn healthcheck(&self, name: &str) -> Result<Option<HealthSpec>, RuntimeError> {
        Ok(self.read(name)?.health)
    }

    async fn probe(
        &self,
        name: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<(i32, String), RuntimeError> {
        let spec = self.exec_spec(
            name,
            &ExecOptions {
                argv: argv.to_vec(),
                ..ExecOptions::default()
            },
        )?;
        let n = name.to_string();
        tokio::task::spawn_blocking(move || run_probe(&n, &spec, timeout))
            .await
            .map_err(|e| step(name, "health probe", e))?
    }
}
