//! One step from the file to the kernel: a service, its image's config and the image's
//! accounts (/etc/passwd, /etc/group) become the container's typed configuration, in pure
//! code. The runtime resolves the image and reads the files, calls `container`, and carries
//! the result to the kernel; nothing below this step reads the project file's keys.
//!
//! Follow `mem_limit`: `spec::model::Service::mem_limit` (parsed with its unit at load) →
//! `limits` here → `config::Limits::memory` → `runtime::linux::cgroup` writes `memory.max`
//! (v2) or `memory.limit_in_bytes` (v1).

pub mod config;
pub mod devices;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use self::config::{Blkio, Hook, Hooks, Limits, LogSpec, Process};
use self::devices::{Kind, Policy, Rule};
use crate::runtime::{ContainerSpec, HealthSpec};
use crate::spec::model::Service;

/// A service's container, as the kernel layer takes it. Decided once, at create.
#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    /// The container's host name; None for `uts: host` (the host's own).
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    pub read_only: bool,
    /// Its own network namespace (false: `network_mode: host`).
    pub own_network: bool,
    pub shm_size: Option<u64>,
    pub sysctls: Vec<(String, String)>,
    pub log: LogSpec,
    /// `devices:` as (host node, path in the container).
    pub devices: Vec<(PathBuf, String)>,
    pub host_ipc: bool,
    pub host_uts: bool,
    /// The service process, without its seccomp program (compiled by the runtime when
    /// `confinement.seccomp` asks for it) or its AppArmor profile.
    pub process: Process,
    pub confinement: Confinement,
    pub limits: Limits,
    /// The stop signal's name, the file's over the image's (SIGTERM when neither names one).
    pub stop_signal: Option<String>,
    pub health: Option<HealthSpec>,
    pub net: NetConfig,
    /// The file's mounts, and an anonymous volume for each of the image's `VOLUME`s.
    pub mounts: Vec<crate::disk::MountSpec>,
    /// `storage_opt.size`: the size of its writable layer's own file system.
    pub storage: Option<u64>,
    pub hooks: Hooks,
}

/// What `security_opt` asks of the kernel's confinement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// Docker's default seccomp profile applies (not `seccomp=unconfined`, not privileged).
    pub seccomp: bool,
    /// `apparmor=NAME` (or `unconfined`), when the file names a profile.
    pub apparmor: Option<String>,
}

/// The image's /etc/passwd and /etc/group (empty when it has none).
#[derive(Debug, Clone, Default)]
pub struct Accounts {
    pub passwd: String,
    pub group: String,
}

/// A device node on the host, as `stat` and /sys describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Block or Char; None for a path that is not a device node.
    pub kind: Option<Kind>,
    pub major: u32,
    pub minor: u32,
    /// For a partition: the whole disk it is part of (`/dev/sda`).
    pub partition_of: Option<String>,
}

/// Looks device paths up on the host (the runtime's `stat`; a table in tests).
pub trait DeviceNodes {
    fn node(&self, path: &str) -> std::io::Result<Node>;
}

/// A user or group the image's accounts do not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("no user `{0}` in the image's /etc/passwd")]
    NoUser(String),
    #[error("no group `{0}` in the image's /etc/group")]
    NoGroup(String),
    #[error("bad /etc/passwd entry for `{0}`")]
    BadEntry(String),
}

/// A key of the file that cannot become a container: the step, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LowerError {
    pub step: &'static str,
    pub message: String,
}

fn err(step: &'static str, message: impl Into<String>) -> LowerError {
    LowerError {
        step,
        message: message.into(),
    }
}

/// The container of `spec`, from its service, its image's config and the image's accounts.
pub fn container(
    spec: &ContainerSpec,
    image: &crate::image::ImageConfig,
    accounts: &Accounts,
    nodes: &dyn DeviceNodes,
) -> Result<Container, LowerError> {
    let svc = &spec.definition;
    let process = process(svc, image, accounts)?;
    let (devices, device_rules) = devices_of(svc, nodes)?;
    let mut limits = limits(svc);
    limits.devices = device_policy(svc, device_rules)?;
    limits.blkio = blkio(svc, nodes)?;
    let host_uts = ns_mode(svc, "uts")?;
    let opts = security_opts(svc);
    Ok(Container {
        hostname: if host_uts {
            None
        } else {
            Some(svc.hostname.clone().unwrap_or_else(|| spec.name.clone()))
        },
        domainname: svc.domainname.clone(),
        read_only: svc.read_only.unwrap_or(false),
        own_network: svc.network_mode.as_deref() != Some("host"),
        shm_size: svc.shm_size,
        sysctls: svc
            .sysctls
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        log: log_spec(svc),
        devices,
        host_ipc: ns_mode(svc, "ipc")?,
        host_uts,
        confinement: Confinement {
            seccomp: !opts.iter().any(|o| o == "seccomp:unconfined") && !process.privileged,
            apparmor: svc.security_opt.iter().rev().find_map(|o| {
                let (k, v) = o.split_once(['=', ':'])?;
                (k == "apparmor").then(|| v.to_string())
            }),
        },
        process,
        limits,
        stop_signal: svc.stop_signal.clone().or(image.stop_signal.clone()),
        health: HealthSpec::resolve(svc.healthcheck.as_ref(), image.healthcheck.as_ref()),
        net: net_config(spec)?,
        mounts: with_image_volumes(spec, &image.volumes),
        storage: svc.storage_opt.as_ref().and_then(|s| s.size),
        hooks: Hooks {
            post_start: svc.post_start.iter().map(hook).collect(),
            pre_stop: svc.pre_stop.iter().map(hook).collect(),
        },
    })
}

/// A hook of the file, as the runtime runs it.
fn hook(h: &crate::spec::model::Hook) -> Hook {
    Hook {
        argv: h.command.clone(),
        env: h
            .environment
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
            .collect(),
        user: h.user.clone().filter(|u| !u.is_empty()),
        workdir: h.working_dir.clone().filter(|w| !w.is_empty()),
        privileged: h.privileged.unwrap_or(false),
    }
}

/// `security_opt` entries with Docker's `key=value` written as `key:value`.
fn security_opts(svc: &Service) -> Vec<String> {
    svc.security_opt
        .iter()
        .map(|o| o.replace('=', ":"))
        .collect()
}

/// The file's mounts, and an anonymous volume for each `VOLUME` of the image that nothing of
/// the file mounts over, as Docker makes them (filled from the image on first use).
fn with_image_volumes(
    spec: &ContainerSpec,
    image_volumes: &[String],
) -> Vec<crate::disk::MountSpec> {
    let mut out = spec.mounts.clone();
    for target in image_volumes {
        let t = target.trim_end_matches('/');
        if t.is_empty() || out.iter().any(|m| m.target.trim_end_matches('/') == t) {
            continue;
        }
        out.push(crate::disk::MountSpec {
            source: crate::disk::Source::Volume {
                name: crate::disk::anonymous_name(&spec.project, &spec.service, t),
                project: spec.project.clone(),
                anonymous: true,
                external: false,
                labels: Default::default(),
                copy: true,
            },
            target: t.to_string(),
            read_only: false,
            propagation: None,
        });
    }
    out
}

/// What the container's network needs at each start, kept from the project file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetConfig {
    /// The project networks it joins (addresses are leased at its first start).
    pub networks: Vec<crate::net::Attachment>,
    /// `network_mode: service:X` / `container:X`: the container whose namespace it joins.
    #[serde(default)]
    pub join: Option<String>,
    /// Rates in bytes per second; burst in bytes.
    #[serde(default)]
    pub egress: Option<u64>,
    #[serde(default)]
    pub ingress: Option<u64>,
    #[serde(default)]
    pub burst: Option<u64>,
    #[serde(default)]
    pub extra_hosts: Vec<String>,
    #[serde(default)]
    pub dns: Vec<String>,
    #[serde(default)]
    pub dns_search: Vec<String>,
    #[serde(default)]
    pub dns_opt: Vec<String>,
}

/// The network part of the container, from its spec.
fn net_config(spec: &ContainerSpec) -> Result<NetConfig, LowerError> {
    let svc = &spec.definition;
    let join = match crate::net::mode(svc) {
        crate::net::Mode::Join(m) => Some(match m.split_once(':') {
            // The first replica of the service, as Compose does.
            Some(("service", s)) => format!("{}-{s}-1", spec.project),
            Some(("container", c)) => c.to_string(),
            _ => {
                return Err(err(
                    "network_mode",
                    format!(
                        "`{m}` is not a network mode (use none, host, bridge, service:NAME or \
                         container:NAME)"
                    ),
                ));
            }
        }),
        _ => None,
    };
    let bw = svc.bandwidth.clone().unwrap_or_default();
    Ok(NetConfig {
        networks: spec.networks.clone(),
        join,
        egress: bw.egress.map(|b| b / 8),
        ingress: bw.ingress.map(|b| b / 8),
        burst: bw.burst,
        extra_hosts: svc.extra_hosts.clone(),
        dns: svc.dns.clone(),
        dns_search: svc.dns_search.clone(),
        dns_opt: svc.dns_opt.clone(),
    })
}

/// /etc/hosts of a networked container: localhost, its own names on its first address, and
/// `extra_hosts`.
pub fn hosts_file(
    hostname: &str,
    domainname: Option<&str>,
    own: Option<std::net::Ipv4Addr>,
    extra: &[String],
) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    let names = match domainname {
        Some(d) if !d.is_empty() => format!("{hostname}.{d} {hostname}"),
        _ => hostname.to_string(),
    };
    match own {
        Some(ip) => s.push_str(&format!("{ip}\t{names}\n")),
        None => s.push_str(&format!("127.0.1.1\t{names}\n")),
    }
    for e in extra {
        if let Some((h, ip)) = e.split_once('=') {
            let ip = if ip == "host-gateway" {
                "127.0.0.1"
            } else {
                ip
            };
            s.push_str(&format!("{ip}\t{h}\n"));
        }
    }
    s
}

/// /etc/resolv.conf: the project's DNS server (on the gateway of the first network), then
/// the file's `dns` servers (asked when the first does not answer), `dns_search`, `dns_opt`.
pub fn resolv_file(ours: &[std::net::Ipv4Addr], n: &NetConfig) -> String {
    let mut s = String::new();
    for ip in ours {
        s.push_str(&format!("nameserver {ip}\n"));
    }
    for d in &n.dns {
        s.push_str(&format!("nameserver {d}\n"));
    }
    if !n.dns_search.is_empty() {
        s.push_str(&format!("search {}\n", n.dns_search.join(" ")));
    }
    if !n.dns_opt.is_empty() {
        s.push_str(&format!("options {}\n", n.dns_opt.join(" ")));
    }
    s
}

/// `uid[:gid]`, numeric or by name, resolved in the container's own /etc/passwd and /etc/group,
/// with the user's supplementary groups.
pub fn resolve_user(user: &str, accounts: &Accounts) -> Result<(u32, u32, Vec<u32>), UserError> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = &accounts.passwd;
    let (uid, name, primary) = match u.parse::<u32>() {
        Ok(n) => {
            let entry = passwd.lines().find(|l| l.split(':').nth(2) == Some(u));
            (
                n,
                entry.and_then(|l| l.split(':').next()).map(str::to_string),
                entry
                    .and_then(|l| l.split(':').nth(3))
                    .and_then(|g| g.parse().ok()),
            )
        }
        Err(_) => {
            let entry = passwd
                .lines()
                .find(|l| l.split(':').next() == Some(u))
                .ok_or_else(|| UserError::NoUser(u.to_string()))?;
            let f: Vec<&str> = entry.split(':').collect();
            (
                f.get(2)
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| UserError::BadEntry(u.to_string()))?,
                Some(u.to_string()),
                f.get(3).and_then(|v| v.parse().ok()),
            )
        }
    };
    let group = &accounts.group;
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group_id(group, g).ok_or_else(|| UserError::NoGroup(g.to_string()))?,
        },
        None => primary.unwrap_or(0),
    };
    let groups = match &name {
        Some(n) => group
            .lines()
            .filter(|l| {
                l.split(':')
                    .nth(3)
                    .is_some_and(|m| m.split(',').any(|x| x == n))
            })
            .filter_map(|l| l.split(':').nth(2)?.parse().ok())
            .collect(),
        None => Vec::new(),
    };
    Ok((uid, gid, groups))
}

/// The number of group `name` in an /etc/group.
fn group_id(group: &str, name: &str) -> Option<u32> {
    group
        .lines()
        .find(|l| l.split(':').next() == Some(name))
        .and_then(|l| l.split(':').nth(2)?.parse().ok())
}

/// The service process, merged with the image's config as Docker does: an `entrypoint` in the
/// file drops the image's `CMD`; a `command` replaces it.
fn process(
    svc: &Service,
    config: &crate::image::ImageConfig,
    accounts: &Accounts,
) -> Result<Process, LowerError> {
    let entrypoint = svc
        .entrypoint
        .clone()
        .or(config.entrypoint.clone())
        .unwrap_or_default();
    let cmd = match (&svc.command, &svc.entrypoint) {
        (Some(c), _) => c.clone(),
        (None, Some(_)) => Vec::new(),
        (None, None) => config.cmd.clone().unwrap_or_default(),
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(err(
            "choose command",
            "neither the file nor the image gives a command to run",
        ));
    }
    let mut env: Vec<String> = config.env.clone();
    for (k, v) in &svc.environment {
        let Some(v) = v else { continue };
        env.retain(|e| e.split('=').next() != Some(k.as_str()));
        env.push(format!("{k}={v}"));
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    let user = svc
        .user
        .clone()
        .or(config.user.clone())
        .filter(|u| !u.is_empty());
    let (uid, gid, mut groups) = match &user {
        Some(u) => resolve_user(u, accounts).map_err(|e| err("resolve user", e.to_string()))?,
        None => (0, 0, Vec::new()),
    };
    // `group_add`: more supplementary groups, by number or by name in the image's /etc/group.
    for gname in &svc.group_add {
        match gname
            .parse::<u32>()
            .ok()
            .or_else(|| group_id(&accounts.group, gname))
        {
            Some(gid) if !groups.contains(&gid) => groups.push(gid),
            Some(_) => {}
            None => {
                return Err(err(
                    "resolve group_add",
                    UserError::NoGroup(gname.clone()).to_string(),
                ));
            }
        }
    }
    let opts = security_opts(svc);
    Ok(Process {
        args,
        env,
        cwd: svc
            .working_dir
            .clone()
            .or(config.working_dir.clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into()),
        uid,
        gid,
        groups,
        allow_new_privs: opts.iter().any(|o| o == "no-new-privileges:false"),
        cap_add: svc.cap_add.clone(),
        cap_drop: svc.cap_drop.clone(),
        privileged: svc.privileged.unwrap_or(false),
        seccomp: None,
        tty: svc.tty.unwrap_or(false),
        stdin_open: svc.stdin_open.unwrap_or(false),
        rlimits: svc
            .ulimits
            .iter()
            .map(|(k, u)| (k.clone(), u.soft, u.hard))
            .collect(),
        // Validated at load (-1000 to 1000).
        oom_score_adj: svc.oom_score_adj.map(|n| n.clamp(-1000, 1000) as i32),
        apparmor: None,
    })
}

/// Whether `ipc:` / `uts:` (`key`) shares the host's namespace: `host` yes; `private`,
/// `shareable` (and nothing) give the container its own; joining another container's is
/// not supported yet, and says so.
fn ns_mode(svc: &Service, key: &'static str) -> Result<bool, LowerError> {
    let mode = match key {
        "ipc" => svc.ipc.as_deref(),
        _ => svc.uts.as_deref(),
    };
    match mode {
        None | Some("" | "private" | "shareable") => Ok(false),
        Some("host") => Ok(true),
        Some(other) => Err(err(
            "choose namespaces",
            format!("{key}: `{other}` is not supported yet (host, private and shareable are)"),
        )),
    }
}

/// The `devices:` nodes to make (host node, path in the container) and the rules that open them.
type DevicesOf = (Vec<(PathBuf, String)>, Vec<Rule>);

/// `devices:` as (host node, path in the container), with the access each grants in the
/// container's device cgroup: `/dev/fuse`, `/dev/sda:/dev/xvda[:rwm]`, `/dev/sda:rwm` or the
/// long form `{source, target, permissions}`; `rwm` when no permissions are given, as in Docker.
/// A host path that is not a device node is refused here, before anything is made.
fn devices_of(svc: &Service, nodes: &dyn DeviceNodes) -> Result<DevicesOf, LowerError> {
    let mut made = Vec::new();
    let mut rules = Vec::new();
    let bad = |why: String| err("devices", why);
    for d in &svc.devices {
        let (src, dst) = (&d.source, &d.target);
        let access = match &d.permissions {
            Some(p) => devices::parse_access(p).map_err(|e| bad(format!("{src}: {e}")))?,
            None => devices::MKNOD | devices::READ | devices::WRITE,
        };
        let node = nodes.node(src).map_err(|e| bad(format!("{src}: {e}")))?;
        let Some(kind) = node.kind else {
            return Err(bad(format!(
                "{src} is not a device node (list each device of a directory)"
            )));
        };
        rules.push(Rule {
            kind,
            major: Some(node.major),
            minor: Some(node.minor),
            access,
        });
        made.push((PathBuf::from(src), dst.clone()));
    }
    Ok((made, rules))
}

/// The container's device policy: the default list, its `devices:` and its
/// `device_cgroup_rules`; every device when it is privileged.
fn device_policy(svc: &Service, device_rules: Vec<Rule>) -> Result<Policy, LowerError> {
    let mut extra = device_rules;
    for text in &svc.device_cgroup_rules {
        extra.push(
            devices::parse_rule(text).map_err(|e| err("device_cgroup_rules", e.to_string()))?,
        );
    }
    Ok(Policy {
        allow_all: svc.privileged.unwrap_or(false),
        extra,
    })
}

/// `blkio_config` with each device path resolved to the block device's numbers. The kernel
/// throttles and weighs whole disks, not partitions, so a partition is refused here with the
/// disk to name instead (the kernel's own answer would be a bare ENODEV).
fn blkio(svc: &Service, nodes: &dyn DeviceNodes) -> Result<Blkio, LowerError> {
    let Some(b) = &svc.blkio_config else {
        return Ok(Default::default());
    };
    let dev = |path: &str| -> Result<(u32, u32), LowerError> {
        let node = nodes
            .node(path)
            .map_err(|e| err("blkio_config", format!("device {path}: {e}")))?;
        if node.kind != Some(Kind::Block) {
            return Err(err("blkio_config", format!("{path} is not a block device")));
        }
        if let Some(disk) = node.partition_of {
            return Err(err(
                "blkio_config",
                format!("{path} is a partition; the kernel limits whole disks: name {disk}"),
            ));
        }
        Ok((node.major, node.minor))
    };
    let rates = |list: &[crate::spec::model::BlkioBps]| {
        list.iter()
            .map(|r| dev(&r.path).map(|(a, i)| (a, i, r.rate)))
            .collect::<Result<Vec<_>, _>>()
    };
    let iops = |list: &[crate::spec::model::BlkioIops]| {
        list.iter()
            .map(|r| dev(&r.path).map(|(a, i)| (a, i, r.rate)))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Blkio {
        weight: b.weight,
        weight_device: b
            .weight_device
            .iter()
            .map(|w| dev(&w.path).map(|(a, i)| (a, i, w.weight)))
            .collect::<Result<_, _>>()?,
        read_bps: rates(&b.device_read_bps)?,
        write_bps: rates(&b.device_write_bps)?,
        read_iops: iops(&b.device_read_iops)?,
        write_iops: iops(&b.device_write_iops)?,
    })
}

/// `logging.options.max-size` / `max-file` (Docker's json-file options), bounded by default.
fn log_spec(svc: &Service) -> LogSpec {
    let mut l = LogSpec::default();
    let Some(opts) = svc.logging.as_ref().map(|g| &g.options) else {
        return l;
    };
    if let Some(s) = opts.get("max-size")
        && let Ok(n) = crate::spec::units::parse_size(s)
    {
        l.max_size = n.max(4096);
    }
    if let Some(n) = opts
        .get("max-file")
        .and_then(|s| s.trim().parse::<u32>().ok())
    {
        l.max_files = n.max(1);
    }
    l
}

/// The cgroup limits: the service's own keys over `deploy.resources`.
fn limits(svc: &Service) -> Limits {
    let res = svc.deploy.as_ref().and_then(|d| d.resources.as_ref());
    let lim = res.and_then(|r| r.limits.as_ref());
    let rsv = res.and_then(|r| r.reservations.as_ref());
    Limits {
        cpus: svc.cpus.or(lim.and_then(|l| l.cpus)),
        cpu_shares: svc.cpu_shares,
        cpu_period: svc.cpu_period,
        cpu_quota: svc.cpu_quota,
        cpuset: svc.cpuset.clone().filter(|s| !s.trim().is_empty()),
        memory: svc.mem_limit.or(lim.and_then(|l| l.memory)),
        memory_swap: svc.memswap_limit,
        memory_reservation: svc.mem_reservation.or(rsv.and_then(|r| r.memory)),
        swappiness: svc.mem_swappiness,
        pids: svc.pids_limit.or(lim.and_then(|l| l.pids)),
        devices: Default::default(),
        blkio: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::ImageConfig;

    fn cfg(ep: Option<&[&str]>, cmd: Option<&[&str]>) -> ImageConfig {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        ImageConfig {
            entrypoint: ep.map(v),
            cmd: cmd.map(v),
            env: vec!["PATH=/image/bin".into(), "A=image".into()],
            ..ImageConfig::default()
        }
    }

    fn svc(ep: Option<&[&str]>, cmd: Option<&[&str]>) -> Service {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Service {
            entrypoint: ep.map(v),
            command: cmd.map(v),
            ..Service::default()
        }
    }

    fn args(s: &Service, c: &ImageConfig) -> Result<Vec<String>, LowerError> {
        process(s, c, &Accounts::default()).map(|p| p.args)
    }

    /// Device nodes by path, as a host's `stat` would give them.
    struct Table(Vec<(&'static str, Node)>);

    impl DeviceNodes for Table {
        fn node(&self, path: &str) -> std::io::Result<Node> {
            self.0
                .iter()
                .find(|(p, _)| *p == path)
                .map(|(_, n)| n.clone())
                .ok_or_else(|| std::io::ErrorKind::NotFound.into())
        }
    }

    fn node(kind: Option<Kind>, major: u32, minor: u32, partition_of: Option<&str>) -> Node {
        Node {
            kind,
            major,
            minor,
            partition_of: partition_of.map(str::to_string),
        }
    }

    fn spec_of(svc: Service) -> ContainerSpec {
        ContainerSpec {
            project: "p".into(),
            service: "web".into(),
            index: 1,
            name: "p-web-1".into(),
            config_hash: String::new(),
            definition: svc,
            oneoff: false,
            networks: Vec::new(),
            mounts: Vec::new(),
            granted: Vec::new(),
        }
    }

    fn lower(svc: Service) -> Result<Container, LowerError> {
        let nodes = Table(vec![
            ("/dev/fuse", node(Some(Kind::Char), 10, 229, None)),
            ("/dev/vdb", node(Some(Kind::Block), 254, 16, None)),
            (
                "/dev/vdb1",
                node(Some(Kind::Block), 254, 17, Some("/dev/vdb")),
            ),
            ("/etc/hostname", node(None, 0, 0, None)),
        ]);
        container(
            &spec_of(svc),
            &cfg(None, Some(&["/run"])),
            &Accounts::default(),
            &nodes,
        )
    }

    #[test]
    fn command_and_entrypoint_merge_like_docker() {
        let image = cfg(Some(&["/ep"]), Some(&["default"]));
        assert_eq!(args(&svc(None, None), &image).unwrap(), ["/ep", "default"]);
        assert_eq!(
            args(&svc(None, Some(&["mine"])), &image).unwrap(),
            ["/ep", "mine"]
        );
        // A new entrypoint drops the image's CMD.
        assert_eq!(args(&svc(Some(&["/new"]), None), &image).unwrap(), ["/new"]);
        assert_eq!(
            args(&svc(Some(&["/new"]), Some(&["x"])), &image).unwrap(),
            ["/new", "x"]
        );
        assert!(args(&svc(None, None), &cfg(None, None)).is_err());
    }

    #[test]
    fn environment_layers_over_the_image() {
        let mut s = svc(Some(&["/x"]), None);
        s.environment.insert("A".into(), Some("service".into()));
        s.environment.insert("UNSET".into(), None);
        let p = process(&s, &cfg(None, None), &Accounts::default()).unwrap();
        assert!(p.env.contains(&"A=service".to_string()));
        assert!(!p.env.iter().any(|e| e.starts_with("A=image")));
        assert!(p.env.contains(&"PATH=/image/bin".to_string()));
        assert!(!p.env.iter().any(|e| e.starts_with("UNSET")));
        assert!(
            lower(s).unwrap().confinement.seccomp,
            "the default profile applies"
        );
    }

    #[test]
    fn users_resolve_in_the_image() {
        let accounts = Accounts {
            passwd: "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n".into(),
            group: "root:x:0:\napp:x:1000:\nwheel:x:10:app\ndocker:x:999:other,app\n".into(),
        };
        let roots = &accounts;
        assert_eq!(
            resolve_user("app", roots).unwrap(),
            (1000, 1000, vec![10, 999])
        );
        assert_eq!(resolve_user("app:wheel", roots).unwrap().1, 10);
        assert_eq!(
            resolve_user("1000:5", roots).unwrap(),
            (1000, 5, vec![10, 999])
        );
        assert_eq!(resolve_user("4242", roots).unwrap(), (4242, 0, vec![]));
        assert!(
            resolve_user("ghost", roots)
                .unwrap_err()
                .to_string()
                .contains("no user `ghost`")
        );
        // `group_add` by name and number, after the user's own groups, each once.
        let s = Service {
            user: Some("app".into()),
            group_add: vec!["wheel".into(), "42".into()],
            ..svc(Some(&["/x"]), None)
        };
        let p = process(&s, &cfg(None, None), &accounts).unwrap();
        assert_eq!((p.uid, p.gid, p.groups), (1000, 1000, vec![10, 999, 42]));
        let s = Service {
            group_add: vec!["nosuch".into()],
            ..svc(Some(&["/x"]), None)
        };
        let e = process(&s, &cfg(None, None), &accounts).unwrap_err();
        assert_eq!(e.step, "resolve group_add");
    }

    #[test]
    fn limits_prefer_the_service_keys_then_deploy() {
        let mut s = Service {
            mem_limit: Some(64),
            ..Service::default()
        };
        s.deploy = Some(crate::spec::model::Deploy {
            resources: Some(crate::spec::model::Resources {
                limits: Some(crate::spec::model::ResourceSpec {
                    cpus: Some(0.5),
                    memory: Some(128),
                    pids: Some(10),
                    ..Default::default()
                }),
                reservations: None,
            }),
            ..Default::default()
        });
        let l = limits(&s);
        assert_eq!((l.memory, l.cpus, l.pids), (Some(64), Some(0.5), Some(10)));
    }

    #[test]
    fn mem_limit_reaches_the_limits_the_cgroup_is_made_from() {
        let c = lower(Service {
            mem_limit: Some(64 << 20),
            pids_limit: Some(50),
            cpu_shares: Some(512),
            ..Service::default()
        })
        .unwrap();
        assert_eq!(c.limits.memory, Some(64 << 20));
        assert_eq!(c.limits.pids, Some(50));
        assert_eq!(c.limits.cpu_shares, Some(512));
        // The default device list only, and the container's own name as its host name.
        assert!(!c.limits.devices.allow_all && c.limits.devices.extra.is_empty());
        assert_eq!(c.hostname.as_deref(), Some("p-web-1"));
        assert_eq!(c.process.args, ["/run"]);
    }

    #[test]
    fn devices_resolve_to_numbers_and_what_is_not_a_device_is_refused() {
        let mut s = Service {
            devices: vec![crate::spec::model::Device {
                source: "/dev/fuse".into(),
                target: "/dev/fuse".into(),
                permissions: Some("rw".into()),
            }],
            device_cgroup_rules: vec!["b 7:* rmw".into()],
            ..Service::default()
        };
        let c = lower(s.clone()).unwrap();
        assert_eq!(
            c.devices,
            [(PathBuf::from("/dev/fuse"), "/dev/fuse".to_string())]
        );
        let fuse = &c.limits.devices.extra[0];
        assert_eq!(
            (fuse.kind, fuse.major, fuse.minor),
            (Kind::Char, Some(10), Some(229))
        );
        assert_eq!(fuse.access, devices::READ | devices::WRITE);
        assert_eq!(c.limits.devices.extra[1].v1_line(), "b 7:* rwm");
        s.devices[0].source = "/etc/hostname".into();
        let e = lower(s.clone()).unwrap_err();
        assert_eq!(e.step, "devices");
        assert!(e.message.contains("is not a device node"), "{e}");
        s.devices.clear();
        s.device_cgroup_rules = vec!["x 1:2 r".into()];
        assert_eq!(lower(s).unwrap_err().step, "device_cgroup_rules");
    }

    #[test]
    fn blkio_names_whole_disks_and_refuses_partitions() {
        use crate::spec::model::{BlkioBps, BlkioConfig};
        let bps = |path: &str| BlkioConfig {
            device_read_bps: vec![BlkioBps {
                path: path.into(),
                rate: 1 << 20,
            }],
            ..Default::default()
        };
        let c = lower(Service {
            blkio_config: Some(bps("/dev/vdb")),
            ..Service::default()
        })
        .unwrap();
        assert_eq!(c.limits.blkio.read_bps, [(254, 16, 1 << 20)]);
        let e = lower(Service {
            blkio_config: Some(bps("/dev/vdb1")),
            ..Service::default()
        })
        .unwrap_err();
        assert!(
            e.message.contains("partition") && e.message.contains("name /dev/vdb"),
            "{e}"
        );
        let e = lower(Service {
            blkio_config: Some(bps("/dev/fuse")),
            ..Service::default()
        })
        .unwrap_err();
        assert!(e.message.contains("not a block device"), "{e}");
    }

    #[test]
    fn namespaces_signals_and_confinement_come_from_the_file_then_the_image() {
        let c = lower(Service {
            uts: Some("host".into()),
            ipc: Some("host".into()),
            security_opt: vec!["seccomp=unconfined".into(), "apparmor=unconfined".into()],
            ..Service::default()
        })
        .unwrap();
        assert_eq!((c.hostname, c.host_uts, c.host_ipc), (None, true, true));
        assert!(!c.confinement.seccomp);
        assert_eq!(c.confinement.apparmor.as_deref(), Some("unconfined"));
        let e = lower(Service {
            ipc: Some("container:db".into()),
            ..Service::default()
        })
        .unwrap_err();
        assert_eq!(e.step, "choose namespaces");
        // The image's stop signal and volumes, under what the file says.
        let image = ImageConfig {
            stop_signal: Some("SIGQUIT".into()),
            volumes: vec!["/data".into(), "/cache/".into()],
            cmd: Some(vec!["/run".into()]),
            ..ImageConfig::default()
        };
        let mut spec = spec_of(Service::default());
        spec.mounts.push(crate::disk::MountSpec {
            source: crate::disk::Source::Tmpfs {
                size: None,
                mode: None,
            },
            target: "/cache".into(),
            read_only: false,
            propagation: None,
        });
        let c = container(&spec, &image, &Accounts::default(), &Table(Vec::new())).unwrap();
        assert_eq!(c.stop_signal.as_deref(), Some("SIGQUIT"));
        let targets: Vec<&str> = c.mounts.iter().map(|m| m.target.as_str()).collect();
        assert_eq!(targets, ["/cache", "/data"]);
        spec.definition.stop_signal = Some("SIGINT".into());
        let c = container(&spec, &image, &Accounts::default(), &Table(Vec::new())).unwrap();
        assert_eq!(c.stop_signal.as_deref(), Some("SIGINT"));
    }
}
