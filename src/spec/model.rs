//! The typed, normalized project: what `berth config` prints and everything later stages read.
//! Every short syntax has become its long form; sizes are bytes, rates bits per second,
//! durations Go-style strings. Keys berth does not model yet are kept, normalized by the schema,
//! in `extra` so `config` shows them and the config hash sees them.

use std::collections::BTreeMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::de;
use super::units::Duration;

pub type Extra = BTreeMap<String, Value>;

fn is_false(b: &bool) -> bool {
    !*b
}

thread_local! {
    /// Set while a service is serialized for its config hash: the fields that do not change a
    /// container are then left out (see `plan::config_hash`).
    static HASHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the hash view of the model: replica count, `depends_on`, `profiles` and
/// `pull_policy` are skipped when serializing.
pub fn hash_view<R>(f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            HASHING.with(|h| h.set(false));
        }
    }
    HASHING.with(|h| h.set(true));
    let _reset = Reset;
    f()
}

fn hashing() -> bool {
    HASHING.with(|h| h.get())
}

fn skip_u32(v: &Option<u32>) -> bool {
    v.is_none() || hashing()
}

fn skip_deps(v: &BTreeMap<String, Dependency>) -> bool {
    v.is_empty() || hashing()
}

fn skip_strings(v: &[String]) -> bool {
    v.is_empty() || hashing()
}

fn skip_opt_string(v: &Option<String>) -> bool {
    v.is_none() || hashing()
}

/// `deploy: {replicas: 3}` hashes like no `deploy` at all (and like `scale: 3`).
fn skip_deploy(v: &Option<Deploy>) -> bool {
    match v {
        None => true,
        Some(d) => {
            hashing()
                && d.resources.is_none()
                && d.restart_policy.is_none()
                && d.labels.is_empty()
                && d.extra.is_empty()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Project {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, Service>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, Network>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, Volume>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, FileObject>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub configs: BTreeMap<String, FileObject>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub disks: BTreeMap<String, Disk>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, Value>,
    /// Top-level `x-` extension fields.
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Service {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Bandwidth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blkio_config: Option<BlkioConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    #[serde(
        default,
        deserialize_with = "de::string_or_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub cap_add: Vec<String>,
    #[serde(
        default,
        deserialize_with = "de::string_or_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub cap_drop: Vec<String>,
    /// `cgroup: private` (the default: a cgroup namespace of its own); `host` is refused at
    /// load until berth supports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(
        default,
        deserialize_with = "de_opt_command",
        skip_serializing_if = "Option::is_none"
    )]
    pub command: Option<Vec<String>>,
    #[serde(
        default,
        deserialize_with = "de_file_refs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub configs: Vec<FileRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    #[serde(
        default,
        deserialize_with = "de::opt_cpus",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpus: Option<f64>,
    #[serde(
        default,
        deserialize_with = "de::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    /// `cpu_period` / `cpu_quota` (microseconds; they win over `cpus`, as in Docker).
    pub cpu_period: Option<u64>,
    #[serde(
        default,
        deserialize_with = "de::opt_i64",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu_quota: Option<i64>,
    #[serde(
        default,
        deserialize_with = "de::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu_shares: Option<u64>,
    #[serde(
        default,
        deserialize_with = "de_opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    /// The CPUs the container may run on (`0-1`, `0,2`).
    pub cpuset: Option<String>,
    /// `device_cgroup_rules` (`c 1:3 rwm`), parsed by the runtime's device policy.
    #[serde(
        default,
        deserialize_with = "de::string_or_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub device_cgroup_rules: Vec<String>,
    /// `devices:`: host device nodes made in the container, with the access each grants.
    #[serde(
        default,
        deserialize_with = "de_devices",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub devices: Vec<Device>,
    #[serde(
        default,
        deserialize_with = "de_depends_on",
        skip_serializing_if = "skip_deps"
    )]
    pub depends_on: BTreeMap<String, Dependency>,
    #[serde(default, skip_serializing_if = "skip_deploy")]
    pub deploy: Option<Deploy>,
    /// `develop:` (Compose Develop Specification): `watch` rules for `berth watch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub develop: Option<Develop>,
    #[serde(
        default,
        deserialize_with = "de_disk_mounts",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub disks: Vec<DiskMount>,
    #[serde(
        default,
        deserialize_with = "de::string_or_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub dns: Vec<String>,
    #[serde(
        default,
        deserialize_with = "de::string_or_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub dns_opt: Vec<String>,
    #[serde(
        default,
        deserialize_with = "de::string_or_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub dns_search: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domainname: Option<String>,
    #[serde(
        default,
        deserialize_with = "de_opt_command",
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    /// The service's environment: `env_file`s first, `environment` on top. A `None` value is a
    /// variable named without a value and not set in the shell: it is left unset.
    #[serde(
        default,
        deserialize_with = "de::dict_opt",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub environment: BTreeMap<String, Option<String>>,
    /// Read into `environment` by the loader, then emptied.
    #[serde(default, skip_serializing, deserialize_with = "de_env_files")]
    pub env_file: Vec<EnvFile>,
    #[serde(
        default,
        deserialize_with = "de_expose",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub expose: Vec<String>,
    #[serde(
        default,
        deserialize_with = "de_extra_hosts",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub extra_hosts: Vec<String>,
    #[serde(
        default,
        deserialize_with = "de::string_or_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    /// More supplementary groups, by number or by name in the image's /etc/group.
    pub group_add: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(
        default,
        deserialize_with = "de::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub init: Option<bool>,
    /// `host` shares the host's IPC namespace; `private`/`shareable` (or nothing) give the
    /// container its own (validated at load).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipc: Option<String>,
    #[serde(
        default,
        deserialize_with = "de::dict",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<Logging>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    #[serde(
        default,
        deserialize_with = "de::opt_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub mem_limit: Option<u64>,
    #[serde(
        default,
        deserialize_with = "de::opt_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub mem_reservation: Option<u64>,
    #[serde(
        default,
        deserialize_with = "de::opt_swap",
        skip_serializing_if = "Option::is_none"
    )]
    pub memswap_limit: Option<i64>,
    #[serde(
        default,
        deserialize_with = "de::opt_u64",
        skip_serializing_if = "Option::is_none"
    )]
    /// 0-100; cgroup v1 only, as in Docker.
    pub mem_swappiness: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<String>,
    #[serde(
        default,
        deserialize_with = "de_service_networks",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub networks: BTreeMap<String, Option<ServiceNetwork>>,
    #[serde(
        default,
        deserialize_with = "de::opt_i64",
        skip_serializing_if = "Option::is_none"
    )]
    /// -1000 to 1000.
    pub oom_score_adj: Option<i64>,
    #[serde(
        default,
        deserialize_with = "de::opt_i64",
        skip_serializing_if = "Option::is_none"
    )]
    pub pids_limit: Option<i64>,
    #[serde(
        default,
        deserialize_with = "de_ports",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ports: Vec<Port>,
    /// Commands run in the container once it has started (`post_start`), and before its stop
    /// signal (`pre_stop`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_start: Vec<Hook>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_stop: Vec<Hook>,
    #[serde(
        default,
        deserialize_with = "de::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub privileged: Option<bool>,
    #[serde(default, skip_serializing_if = "skip_strings")]
    pub profiles: Vec<String>,
    /// `provider:` (Compose's provider services): berth loads it and runs none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,
    #[serde(default, skip_serializing_if = "skip_opt_string")]
    pub pull_policy: Option<String>,
    #[serde(
        default,
        deserialize_with = "de::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub read_only: Option<bool>,
    #[serde(
        default,
        deserialize_with = "de_restart",
        skip_serializing_if = "Option::is_none"
    )]
    pub restart: Option<Restart>,
    #[serde(
        default,
        deserialize_with = "de::opt_u32",
        skip_serializing_if = "skip_u32"
    )]
    pub scale: Option<u32>,
    #[serde(
        default,
        deserialize_with = "de_file_refs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub secrets: Vec<FileRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_opt: Vec<String>,
    #[serde(
        default,
        deserialize_with = "de::opt_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub shm_size: Option<u64>,
    #[serde(
        default,
        deserialize_with = "de::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub stdin_open: Option<bool>,
    #[serde(
        default,
        deserialize_with = "de::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_grace_period: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_opt: Option<StorageOpt>,
    #[serde(
        default,
        deserialize_with = "de::dict",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub sysctls: BTreeMap<String, String>,
    #[serde(
        default,
        deserialize_with = "de::string_or_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tmpfs: Vec<String>,
    #[serde(
        default,
        deserialize_with = "de::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub tty: Option<bool>,
    #[serde(
        default,
        deserialize_with = "de_ulimits",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub ulimits: BTreeMap<String, Ulimit>,
    #[serde(
        default,
        deserialize_with = "de_opt_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub user: Option<String>,
    /// As `ipc`, for the UTS namespace (host name and domain name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uts: Option<String>,
    #[serde(
        default,
        deserialize_with = "de_mounts",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub volumes: Vec<Mount>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes_from: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Every other Compose key, as written (schema-checked), and `x-` fields.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Service {
    /// How many containers this service runs: `scale`, else `deploy.replicas`, else 1.
    pub fn replicas(&self) -> u32 {
        // A provider's service has no containers (berth runs no providers; `up` says so).
        if self.provider.is_some() {
            return 0;
        }
        self.scale
            .or_else(|| self.deploy.as_ref().and_then(|d| d.replicas))
            .unwrap_or(1)
    }
}

fn de_opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(v) => Some(v.to_string()),
    })
}

fn de_opt_command<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    de::opt_command(d)
}

/// A lifecycle hook: a command run inside the container, as `exec` runs one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Hook {
    #[serde(deserialize_with = "de::command")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(
        default,
        deserialize_with = "de::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub privileged: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(
        default,
        deserialize_with = "de::dict_opt",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub environment: BTreeMap<String, Option<String>>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Bandwidth {
    #[serde(
        default,
        deserialize_with = "de::opt_rate",
        skip_serializing_if = "Option::is_none"
    )]
    pub egress: Option<u64>,
    #[serde(
        default,
        deserialize_with = "de::opt_rate",
        skip_serializing_if = "Option::is_none"
    )]
    pub ingress: Option<u64>,
    #[serde(
        default,
        deserialize_with = "de::opt_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub burst: Option<u64>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Build {
    pub context: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dockerfile_inline: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_cache: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<u64>,
    /// `host=address` entries for the `/etc/hosts` of the `RUN` steps.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl<'de> Deserialize<'de> for Build {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Long {
            #[serde(default)]
            context: Option<String>,
            #[serde(default)]
            dockerfile: Option<String>,
            #[serde(default)]
            dockerfile_inline: Option<String>,
            #[serde(default, deserialize_with = "de::dict_opt")]
            args: BTreeMap<String, Option<String>>,
            #[serde(default)]
            target: Option<String>,
            #[serde(default, deserialize_with = "de::dict")]
            labels: BTreeMap<String, String>,
            #[serde(default)]
            network: Option<String>,
            #[serde(default, deserialize_with = "de::opt_bool")]
            no_cache: Option<bool>,
            #[serde(default, deserialize_with = "de::opt_bool")]
            pull: Option<bool>,
            #[serde(default)]
            tags: Vec<String>,
            #[serde(default, deserialize_with = "de::opt_size")]
            shm_size: Option<u64>,
            #[serde(default, deserialize_with = "de_extra_hosts")]
            extra_hosts: Vec<String>,
            #[serde(flatten)]
            extra: Extra,
        }
        match Value::deserialize(d)? {
            Value::String(context) => Ok(Build {
                context,
                ..Build::default()
            }),
            v @ Value::Object(_) => {
                let l = Long::deserialize(v).map_err(D::Error::custom)?;
                Ok(Build {
                    context: l.context.unwrap_or_else(|| ".".into()),
                    dockerfile: l.dockerfile,
                    dockerfile_inline: l.dockerfile_inline,
                    args: l.args,
                    target: l.target,
                    labels: l.labels,
                    network: l.network,
                    no_cache: l.no_cache,
                    pull: l.pull,
                    tags: l.tags,
                    shm_size: l.shm_size,
                    extra_hosts: l.extra_hosts,
                    extra: l.extra,
                })
            }
            _ => Err(D::Error::custom(
                "expected a build context path or a mapping",
            )),
        }
    }
}

/// A service run by a provider plugin (`provider: {type, options}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Provider {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, Value>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// One file a service's environment is read from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvFile {
    pub path: String,
    #[serde(default = "yes")]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

fn yes() -> bool {
    true
}

fn de_env_files<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<EnvFile>, D::Error> {
    let items = match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(v) => vec![v],
    };
    items
        .into_iter()
        .map(|v| match v {
            Value::String(path) => Ok(EnvFile {
                path,
                required: true,
                format: None,
            }),
            Value::Object(m) => {
                let path = m
                    .get("path")
                    .and_then(Value::as_str)
                    .ok_or_else(|| D::Error::custom("expected `path:` in an env_file entry"))?
                    .to_string();
                let required = match m.get("required") {
                    Some(v) => de::bool_of(v).map_err(D::Error::custom)?,
                    None => true,
                };
                let format = m.get("format").and_then(Value::as_str).map(str::to_string);
                Ok(EnvFile {
                    path,
                    required,
                    format,
                })
            }
            other => Err(D::Error::custom(format!(
                "expected a path or a mapping with `path:`, found {other}"
            ))),
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    #[default]
    ServiceStarted,
    ServiceHealthy,
    ServiceCompletedSuccessfully,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dependency {
    pub condition: Condition,
    /// Restart this service when the dependency is restarted (Compose's `restart: true`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub restart: bool,
    /// With `required: false`, a dependency that is missing or fails does not stop this service.
    #[serde(default = "yes")]
    pub required: bool,
}

fn de_depends_on<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Dependency>, D::Error> {
    let mut out = BTreeMap::new();
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for i in items {
                let name = i
                    .as_str()
                    .ok_or_else(|| D::Error::custom("expected a service name"))?;
                out.insert(
                    name.to_string(),
                    Dependency {
                        condition: Condition::ServiceStarted,
                        restart: false,
                        required: true,
                    },
                );
            }
        }
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let (condition, restart, required) = match &v {
                    Value::Null => (Condition::ServiceStarted, false, true),
                    Value::Object(o) => {
                        let condition = match o.get("condition") {
                            None | Some(Value::Null) => Condition::ServiceStarted,
                            Some(c) => Condition::deserialize(c).map_err(|_| {
                                D::Error::custom(format!(
                                    "expected a condition of service_started, service_healthy or service_completed_successfully, found {c}"
                                ))
                            })?,
                        };
                        let restart = match o.get("restart") {
                            Some(v) => de::bool_of(v).map_err(D::Error::custom)?,
                            None => false,
                        };
                        let required = match o.get("required") {
                            Some(v) => de::bool_of(v).map_err(D::Error::custom)?,
                            None => true,
                        };
                        (condition, restart, required)
                    }
                    other => {
                        return Err(D::Error::custom(format!(
                            "expected a mapping with `condition:`, found {other}"
                        )));
                    }
                };
                out.insert(
                    k,
                    Dependency {
                        condition,
                        restart,
                        required,
                    },
                );
            }
        }
        Some(other) => {
            return Err(D::Error::custom(format!(
                "expected a list of service names or a mapping, found {other}"
            )));
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Deploy {
    #[serde(
        default,
        deserialize_with = "de::opt_u32",
        skip_serializing_if = "skip_u32"
    )]
    pub replicas: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    #[serde(
        default,
        deserialize_with = "de::dict",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservations: Option<ResourceSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ResourceSpec {
    #[serde(
        default,
        deserialize_with = "de::opt_cpus",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpus: Option<f64>,
    #[serde(
        default,
        deserialize_with = "de::opt_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub memory: Option<u64>,
    #[serde(
        default,
        deserialize_with = "de::opt_i64",
        skip_serializing_if = "Option::is_none"
    )]
    pub pids: Option<i64>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RestartPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    #[serde(
        default,
        deserialize_with = "de::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub delay: Option<Duration>,
    #[serde(
        default,
        deserialize_with = "de::opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_attempts: Option<u32>,
    #[serde(
        default,
        deserialize_with = "de::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub window: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskMount {
    pub source: String,
    pub target: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
}

fn de_disk_mounts<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<DiskMount>, D::Error> {
    let items = match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(D::Error::custom(format!(
                "expected a list of disks, found {other}"
            )));
        }
    };
    items
        .into_iter()
        .map(|v| match v {
            Value::String(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                let (src, tgt, ro) = match parts.as_slice() {
                    [s, t] => (*s, *t, false),
                    [s, t, "ro"] => (*s, *t, true),
                    [s, t, "rw"] => (*s, *t, false),
                    _ => {
                        return Err(D::Error::custom(format!(
                            "expected `DISK:/target[:ro|:rw]`, found `{s}`"
                        )));
                    }
                };
                Ok(DiskMount {
                    source: src.to_string(),
                    target: tgt.to_string(),
                    read_only: ro,
                })
            }
            Value::Object(m) => {
                let get = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
                let read_only = match m.get("read_only") {
                    Some(v) => de::bool_of(v).map_err(D::Error::custom)?,
                    None => false,
                };
                Ok(DiskMount {
                    source: get("source")
                        .ok_or_else(|| D::Error::custom("expected `source:` naming a disk"))?,
                    target: get("target")
                        .ok_or_else(|| D::Error::custom("expected `target:`, a path"))?,
                    read_only,
                })
            }
            other => Err(D::Error::custom(format!(
                "expected `DISK:/target` or a mapping, found {other}"
            ))),
        })
        .collect()
}

fn de_expose<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    de::string_or_list(d)
}

/// `extra_hosts` as a list of `host=ip` (from `host:ip`, `host=ip`, or a mapping).
fn de_extra_hosts<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let mut out = Vec::new();
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for i in items {
                let s = i
                    .as_str()
                    .ok_or_else(|| D::Error::custom("expected `host=address`"))?;
                let (h, a) = s
                    .split_once('=')
                    .or_else(|| s.split_once(':'))
                    .ok_or_else(|| {
                        D::Error::custom(format!("expected `host=address`, found `{s}`"))
                    })?;
                out.push(format!("{h}={a}"));
            }
        }
        Some(Value::Object(m)) => {
            for (h, a) in m {
                match a {
                    Value::Array(addrs) => {
                        for a in addrs {
                            out.push(format!("{h}={}", a.as_str().unwrap_or_default()));
                        }
                    }
                    Value::String(a) => out.push(format!("{h}={a}")),
                    other => out.push(format!("{h}={other}")),
                }
            }
        }
        Some(other) => {
            return Err(D::Error::custom(format!(
                "expected a list or mapping of hosts, found {other}"
            )));
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Healthcheck {
    #[serde(
        default,
        deserialize_with = "de_health_test",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub test: Vec<String>,
    #[serde(
        default,
        deserialize_with = "de::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<Duration>,
    #[serde(
        default,
        deserialize_with = "de::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    #[serde(
        default,
        deserialize_with = "de::opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub retries: Option<u32>,
    #[serde(
        default,
        deserialize_with = "de::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub start_period: Option<Duration>,
    #[serde(
        default,
        deserialize_with = "de::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub start_interval: Option<Duration>,
    #[serde(
        default,
        deserialize_with = "de_bool_default",
        skip_serializing_if = "is_false"
    )]
    pub disable: bool,
}

impl Healthcheck {
    /// True when this check can actually run (not disabled, not `NONE`, has a test).
    pub fn enabled(&self) -> bool {
        !self.disable && !self.test.is_empty() && self.test[0] != "NONE"
    }
}

fn de_bool_default<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(de::opt_bool(d)?.unwrap_or(false))
}

/// `test: "curl -f x"` is `["CMD-SHELL", "curl -f x"]`; lists are kept.
fn de_health_test<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec!["CMD-SHELL".into(), s]),
        Some(Value::Array(items)) => {
            let v: Vec<String> = items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| i.to_string())
                })
                .collect();
            match v.first().map(String::as_str) {
                Some("CMD") | Some("CMD-SHELL") | Some("NONE") | None => Ok(v),
                Some(other) => Err(D::Error::custom(format!(
                    "expected the test list to start with CMD, CMD-SHELL or NONE, found `{other}`"
                ))),
            }
        }
        Some(other) => Err(D::Error::custom(format!(
            "expected a test command (string or list), found {other}"
        ))),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ServiceNetwork {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    #[serde(
        default,
        deserialize_with = "de::opt_i64",
        skip_serializing_if = "Option::is_none"
    )]
    pub priority: Option<i64>,
    #[serde(flatten)]
    pub extra: Extra,
}

fn de_service_networks<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Option<ServiceNetwork>>, D::Error> {
    let mut out = BTreeMap::new();
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for i in items {
                let n = i
                    .as_str()
                    .ok_or_else(|| D::Error::custom("expected a network name"))?;
                out.insert(n.to_string(), None);
            }
        }
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let cfg = match v {
                    Value::Null => None,
                    v => Some(ServiceNetwork::deserialize(v).map_err(D::Error::custom)?),
                };
                out.insert(k, cfg);
            }
        }
        Some(other) => {
            return Err(D::Error::custom(format!(
                "expected a list of network names or a mapping, found {other}"
            )));
        }
    }
    Ok(out)
}

/// A published or exposed port, long form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash)]
pub struct Port {
    pub target: u16,
    /// The host port or range (`8080`, `8000-8010`); None picks a free port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    pub protocol: String,
    #[serde(default = "ingress")]
    pub mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

fn ingress() -> String {
    "ingress".into()
}

impl Port {
    /// The host ports this port claims (None when the host port is chosen at random).
    pub fn host_ports(&self) -> Option<std::ops::RangeInclusive<u16>> {
        match self.published.as_deref().map(parse_range) {
            Some(Ok((a, b))) => Some(a..=b),
            _ => None,
        }
    }
}

fn parse_port_num(s: &str, what: &str) -> Result<u16, String> {
    let n: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("expected a {what} number 1-65535, found `{s}`"))?;
    if n == 0 || n > 65535 {
        return Err(format!("expected a {what} number 1-65535, found {n}"));
    }
    Ok(n as u16)
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (parse_port_num(a, "port")?, parse_port_num(b, "port")?);
            if b < a {
                return Err(format!("port range `{s}` ends before it starts"));
            }
            Ok((a, b))
        }
        None => {
            let p = parse_port_num(s, "port")?;
            Ok((p, p))
        }
    }
}

/// Parses the short port syntax `[[HOST_IP:][HOST[-HOST]]:]CONTAINER[-CONTAINER][/PROTO]`,
/// expanding ranges into one entry per container port.
pub fn parse_port_short(s: &str) -> Result<Vec<Port>, String> {
    let (spec, proto) = match s.rsplit_once('/') {
        Some((a, p)) => (a, p.to_string()),
        None => (s, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!(
            "expected the protocol tcp, udp or sctp, found `{proto}` in `{s}`"
        ));
    }
    // An IPv6 host address is written in brackets: [::1]:8080:80.
    let (host_ip, rest) = if let Some(r) = spec.strip_prefix('[') {
        let (ip, after) = r
            .split_once(']')
            .ok_or_else(|| format!("unclosed `[` in `{s}`"))?;
        (
            Some(ip.to_string()),
            after.strip_prefix(':').unwrap_or(after),
        )
    } else {
        (None, spec)
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let (ip, host, container) = match (host_ip, parts.as_slice()) {
        (None, [c]) => (None, None, *c),
        (None, [h, c]) => (None, Some(*h), *c),
        (None, [ip, h, c]) => (Some(ip.to_string()), Some(*h), *c),
        (Some(ip), [h, c]) => (Some(ip), Some(*h), *c),
        (Some(ip), [c]) => (Some(ip), None, *c),
        _ => {
            return Err(format!(
                "expected `[HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTOCOL]`, found `{s}`"
            ));
        }
    };
    let (c0, c1) = parse_range(container).map_err(|e| format!("{e} (container port in `{s}`)"))?;
    let host = host.filter(|h| !h.is_empty());
    let hr = match host {
        Some(h) => Some(parse_range(h).map_err(|e| format!("{e} (host port in `{s}`)"))?),
        None => None,
    };
    let count = c1 - c0 + 1;
    let mut out = Vec::new();
    for i in 0..count {
        let published = match hr {
            None => None,
            Some((h0, h1)) if h1 - h0 + 1 == count => Some((h0 + i).to_string()),
            Some((h0, h1)) if count == 1 => Some(if h0 == h1 {
                h0.to_string()
            } else {
                format!("{h0}-{h1}")
            }),
            Some(_) => {
                return Err(format!(
                    "the host range and the container range in `{s}` have different lengths"
                ));
            }
        };
        out.push(Port {
            target: c0 + i,
            published,
            host_ip: ip.clone().filter(|x| !x.is_empty()),
            protocol: proto.clone(),
            mode: ingress(),
            name: None,
            app_protocol: None,
        });
    }
    Ok(out)
}

fn de_ports<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Port>, D::Error> {
    let items = match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(D::Error::custom(format!(
                "expected a list of ports, found {other}"
            )));
        }
    };
    let mut out = Vec::new();
    for v in items {
        match v {
            Value::Number(n) => {
                let p =
                    parse_port_num(&n.to_string(), "container port").map_err(D::Error::custom)?;
                out.push(Port {
                    target: p,
                    published: None,
                    host_ip: None,
                    protocol: "tcp".into(),
                    mode: ingress(),
                    name: None,
                    app_protocol: None,
                });
            }
            Value::String(s) => out.extend(parse_port_short(&s).map_err(D::Error::custom)?),
            Value::Object(m) => {
                let target = match m.get("target") {
                    Some(t) => parse_port_num(
                        &de::i64_of(t).map_err(D::Error::custom)?.to_string(),
                        "container port",
                    )
                    .map_err(D::Error::custom)?,
                    None => return Err(D::Error::custom("expected `target:`, the container port")),
                };
                let published = match m.get("published") {
                    None | Some(Value::Null) => None,
                    Some(p) => {
                        let t = match p {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        parse_range(&t).map_err(D::Error::custom)?;
                        Some(t)
                    }
                };
                let get = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
                let protocol = get("protocol").unwrap_or_else(|| "tcp".into());
                if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
                    return Err(D::Error::custom(format!(
                        "expected the protocol tcp, udp or sctp, found `{protocol}`"
                    )));
                }
                out.push(Port {
                    target,
                    published,
                    host_ip: get("host_ip"),
                    protocol,
                    mode: get("mode").unwrap_or_else(ingress),
                    name: get("name"),
                    app_protocol: get("app_protocol"),
                });
            }
            other => return Err(D::Error::custom(format!("expected a port, found {other}"))),
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restart(pub String);

impl Restart {
    /// The retry limit of `on-failure:N`.
    pub fn max_retries(&self) -> Option<u32> {
        self.0
            .strip_prefix("on-failure:")
            .and_then(|n| n.parse().ok())
    }
}

/// `no` (also YAML 1.1's `false` for an unquoted `no`), `always`, `on-failure[:N]`,
/// `unless-stopped`.
fn de_restart<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Restart>, D::Error> {
    let s = match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Bool(false)) => "no".to_string(),
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(D::Error::custom(format!(
                "expected no, always, on-failure[:N] or unless-stopped, found {other}"
            )));
        }
    };
    let ok = match s.as_str() {
        "no" | "always" | "on-failure" | "unless-stopped" => true,
        other => other
            .strip_prefix("on-failure:")
            .is_some_and(|n| n.parse::<u32>().is_ok()),
    };
    if !ok {
        return Err(D::Error::custom(format!(
            "expected no, always, on-failure[:N] or unless-stopped, found `{s}`"
        )));
    }
    Ok(Some(Restart(s)))
}

/// A secret or config attached to a service, long form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRef {
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

fn de_file_refs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<FileRef>, D::Error> {
    let items = match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(other) => return Err(D::Error::custom(format!("expected a list, found {other}"))),
    };
    items
        .into_iter()
        .map(|v| match v {
            Value::String(source) => Ok(FileRef {
                source,
                target: None,
                uid: None,
                gid: None,
                mode: None,
            }),
            Value::Object(m) => {
                let get = |k: &str| {
                    m.get(k).and_then(|v| match v {
                        Value::String(s) => Some(s.clone()),
                        Value::Number(n) => Some(n.to_string()),
                        _ => None,
                    })
                };
                let mode =
                    match m.get("mode") {
                        None | Some(Value::Null) => None,
                        Some(Value::Number(n)) => {
                            Some(n.as_u64().and_then(|x| u32::try_from(x).ok()).ok_or_else(
                                || D::Error::custom(format!("expected a file mode, found {n}")),
                            )?)
                        }
                        Some(Value::String(s)) => Some(
                            u32::from_str_radix(s.trim_start_matches("0o"), 8).map_err(|_| {
                                D::Error::custom(format!(
                                    "expected an octal file mode like 0440, found `{s}`"
                                ))
                            })?,
                        ),
                        Some(other) => {
                            return Err(D::Error::custom(format!(
                                "expected a file mode, found {other}"
                            )));
                        }
                    };
                Ok(FileRef {
                    source: get("source").ok_or_else(|| D::Error::custom("expected `source:`"))?,
                    target: get("target"),
                    uid: get("uid"),
                    gid: get("gid"),
                    mode,
                })
            }
            other => Err(D::Error::custom(format!(
                "expected a name or a mapping, found {other}"
            ))),
        })
        .collect()
}

/// `develop:`; its `watch` rules (`berth watch`, `up --watch`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Develop {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub watch: Vec<WatchRule>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// One `develop.watch` rule: on a change under `path`, `sync` it to `target` in the running
/// containers, `rebuild` the image, `restart` the service, or `sync+restart` / `sync+exec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchRule {
    pub action: String,
    pub path: std::path::PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub initial_sync: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<WatchExec>,
}

/// `sync+exec`'s command, run in the container after the sync.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchExec {
    /// A list, or a string run by `/bin/sh -c`.
    pub command: Value,
    #[serde(flatten)]
    pub extra: Extra,
}

impl WatchExec {
    pub fn argv(&self) -> Vec<String> {
        match &self.command {
            Value::String(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
            Value::Array(a) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// One `devices:` entry: `/dev/fuse`, `/dev/sda:/dev/xvda[:rwm]`, `/dev/sda:rwm`, or the long
/// form `{source, target, permissions}`. Without permissions, `rwm`, as in Docker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub source: String,
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<String>,
}

fn de_devices<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Device>, D::Error> {
    let items = match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(D::Error::custom(format!(
                "expected a list of devices, found {other}"
            )));
        }
    };
    items
        .into_iter()
        .map(|it| {
            let (source, target, permissions) = match it {
                Value::String(s) => {
                    let parts: Vec<&str> = s.split(':').collect();
                    match parts.as_slice() {
                        [src] => (src.to_string(), src.to_string(), None),
                        // `/dev/x:rwm`: the second part is the permissions, not a path.
                        [src, p] if !p.starts_with('/') => {
                            (src.to_string(), src.to_string(), Some(p.to_string()))
                        }
                        [src, dst] => (src.to_string(), dst.to_string(), None),
                        [src, dst, p] => (src.to_string(), dst.to_string(), Some(p.to_string())),
                        _ => {
                            return Err(D::Error::custom(format!(
                                "`{s}` is not HOST[:CONTAINER][:PERMISSIONS]"
                            )));
                        }
                    }
                }
                Value::Object(m) => {
                    let text = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
                    let Some(src) = text("source") else {
                        return Err(D::Error::custom(
                            "an entry in the long form needs `source`",
                        ));
                    };
                    (src.clone(), text("target").unwrap_or(src), text("permissions"))
                }
                other => {
                    return Err(D::Error::custom(format!("`{other}` is not a device")));
                }
            };
            if let Some(p) = &permissions
                && (p.is_empty() || !p.chars().all(|c| matches!(c, 'r' | 'w' | 'm')))
            {
                return Err(D::Error::custom(format!(
                    "device permissions are letters of `rwm`; found `{p}`"
                )));
            }
            if !source.starts_with('/') || !target.starts_with('/') {
                return Err(D::Error::custom(format!(
                    "a device is an absolute path on the host and in the container; found `{source}` -> `{target}`"
                )));
            }
            Ok(Device {
                source,
                target,
                permissions,
            })
        })
        .collect()
}

/// `logging:`. berth keeps every container's output in its own JSON log; `options.max-size`
/// and `max-file` rotate it (Docker's json-file options).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Logging {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(
        default,
        deserialize_with = "de::dict",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub options: BTreeMap<String, String>,
}

/// Compose's `blkio_config`: a relative I/O weight, and per-device weights and throttles. The
/// devices are host paths; the runtime resolves them to major:minor numbers when it creates
/// the container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct BlkioConfig {
    #[serde(
        default,
        deserialize_with = "de::opt_u32",
        skip_serializing_if = "Option::is_none"
    )]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weight_device: Vec<BlkioWeight>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_read_bps: Vec<BlkioBps>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_write_bps: Vec<BlkioBps>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_read_iops: Vec<BlkioIops>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_write_iops: Vec<BlkioIops>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlkioWeight {
    pub path: String,
    #[serde(deserialize_with = "de::u32_of_any")]
    pub weight: u32,
}

/// A byte rate: a whole number or a size (`12mb`), per second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlkioBps {
    pub path: String,
    #[serde(deserialize_with = "de::size")]
    pub rate: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlkioIops {
    pub path: String,
    #[serde(deserialize_with = "de::u64_of_any")]
    pub rate: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StorageOpt {
    #[serde(
        default,
        deserialize_with = "de::opt_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub size: Option<u64>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    pub soft: i64,
    pub hard: i64,
}

fn de_ulimits<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Ulimit>, D::Error> {
    let mut out = BTreeMap::new();
    let m = match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => return Ok(out),
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(D::Error::custom(format!(
                "expected a mapping of limits, found {other}"
            )));
        }
    };
    for (k, v) in m {
        let u = match &v {
            Value::Object(o) => {
                let get = |key: &str| -> Result<i64, D::Error> {
                    let x = o.get(key).ok_or_else(|| {
                        D::Error::custom(format!(
                            "ulimit `{k}` needs both `soft` and `hard`; `{key}` is missing"
                        ))
                    })?;
                    de::i64_of(x).map_err(D::Error::custom)
                };
                Ulimit {
                    soft: get("soft")?,
                    hard: get("hard")?,
                }
            }
            other => {
                let n = de::i64_of(other).map_err(D::Error::custom)?;
                Ulimit { soft: n, hard: n }
            }
        };
        if u.soft > u.hard && u.hard >= 0 {
            return Err(D::Error::custom(format!(
                "ulimit `{k}`: soft limit {} is above the hard limit {}",
                u.soft, u.hard
            )));
        }
        out.insert(k, u);
    }
    Ok(out)
}

/// A mount of a service, long form (`volumes:` entries).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Mount {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub target: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<BindOpts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeOpts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs: Option<TmpfsOpts>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct BindOpts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagation: Option<String>,
    #[serde(
        default,
        deserialize_with = "de::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub create_host_path: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selinux: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct VolumeOpts {
    #[serde(
        default,
        deserialize_with = "de::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub nocopy: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subpath: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TmpfsOpts {
    #[serde(
        default,
        deserialize_with = "de::opt_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Value>,
}

/// Parses the short volume syntax `[SOURCE:]TARGET[:OPTIONS]`.
pub fn parse_volume_short(s: &str) -> Result<Mount, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, opts) = match parts.as_slice() {
        [t] => (None, *t, None),
        [src, t] => (Some(*src), *t, None),
        [src, t, o] => (Some(*src), *t, Some(*o)),
        _ => return Err(format!("expected `[SOURCE:]TARGET[:MODE]`, found `{s}`")),
    };
    if target.is_empty() || !target.starts_with('/') {
        return Err(format!(
            "expected an absolute container path as the target, found `{target}` in `{s}`"
        ));
    }
    let is_bind =
        source.is_some_and(|s| s.starts_with('/') || s.starts_with('.') || s.starts_with('~'));
    let mut m = Mount {
        kind: if source.is_none() {
            "volume".into()
        } else if is_bind {
            "bind".into()
        } else {
            "volume".into()
        },
        source: source.map(str::to_string),
        target: target.to_string(),
        ..Mount::default()
    };
    if is_bind {
        m.bind = Some(BindOpts {
            create_host_path: Some(true),
            ..BindOpts::default()
        });
    }
    for o in opts
        .map(|o| o.split(',').collect::<Vec<_>>())
        .unwrap_or_default()
    {
        match o {
            "ro" => m.read_only = true,
            "rw" => m.read_only = false,
            "z" | "Z" if is_bind => {
                m.bind.get_or_insert_with(BindOpts::default).selinux = Some(o.to_string())
            }
            "shared" | "rshared" | "slave" | "rslave" | "private" | "rprivate" if is_bind => {
                m.bind.get_or_insert_with(BindOpts::default).propagation = Some(o.to_string())
            }
            "nocopy" if !is_bind => {
                m.volume.get_or_insert_with(VolumeOpts::default).nocopy = Some(true)
            }
            "cached" | "delegated" | "consistent" => {}
            other => {
                return Err(format!(
                    "unknown volume option `{other}` in `{s}` (known: ro, rw, z, Z, shared, rshared, slave, rslave, private, rprivate, nocopy)"
                ));
            }
        }
    }
    Ok(m)
}

fn de_mounts<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Mount>, D::Error> {
    let items = match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(D::Error::custom(format!(
                "expected a list of volumes, found {other}"
            )));
        }
    };
    items
        .into_iter()
        .map(|v| match v {
            Value::String(s) => parse_volume_short(&s).map_err(D::Error::custom),
            v @ Value::Object(_) => {
                let m = Mount::deserialize(v).map_err(D::Error::custom)?;
                if !m.target.starts_with('/') {
                    return Err(D::Error::custom(format!(
                        "expected an absolute container path as the target, found `{}`",
                        m.target
                    )));
                }
                Ok(m)
            }
            other => Err(D::Error::custom(format!(
                "expected a volume, found {other}"
            ))),
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Network {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(
        default,
        deserialize_with = "de::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub external: Option<bool>,
    #[serde(
        default,
        deserialize_with = "de::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub internal: Option<bool>,
    #[serde(
        default,
        deserialize_with = "de::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub enable_ipv6: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<Ipam>,
    #[serde(
        default,
        deserialize_with = "de::dict",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A network's `ipam:`: berth reads the first IPv4 and the first IPv6 `config` entry's
/// `subnet` and `gateway`; the rest is kept as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Ipam {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config: Vec<IpamConfig>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct IpamConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Volume {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(
        default,
        deserialize_with = "de::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub external: Option<bool>,
    #[serde(
        default,
        deserialize_with = "de::dict",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A top-level secret or config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct FileObject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(
        default,
        deserialize_with = "de::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub external: Option<bool>,
    #[serde(
        default,
        deserialize_with = "de::dict",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DiskKind {
    #[default]
    Private,
    Shared,
}

/// A berth disk (top-level `disks:`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Disk {
    #[serde(default)]
    pub kind: DiskKind,
    #[serde(
        default,
        deserialize_with = "de::opt_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(
        default,
        deserialize_with = "de::opt_bool",
        skip_serializing_if = "Option::is_none"
    )]
    pub external: Option<bool>,
    #[serde(
        default,
        deserialize_with = "de::dict",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ports() {
        let p = parse_port_short("127.0.0.1:8080:80/udp").unwrap();
        assert_eq!(p[0].target, 80);
        assert_eq!(p[0].published.as_deref(), Some("8080"));
        assert_eq!(p[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(p[0].protocol, "udp");
        let r = parse_port_short("8000-8001:80-81").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].published.as_deref(), Some("8001"));
        assert_eq!(r[1].target, 81);
        let v6 = parse_port_short("[::1]:53:53/udp").unwrap();
        assert_eq!(v6[0].host_ip.as_deref(), Some("::1"));
        assert_eq!(
            parse_port_short("9000-9005:80").unwrap()[0]
                .published
                .as_deref(),
            Some("9000-9005")
        );
        assert!(
            parse_port_short("8080:99999")
                .unwrap_err()
                .contains("1-65535")
        );
        assert!(parse_port_short("80/sctpx").is_err());
        assert!(parse_port_short("8000-8002:80-81").is_err());
    }

    #[test]
    fn short_volumes() {
        let m = parse_volume_short("/abs/data:/data:ro,z").unwrap();
        assert_eq!(m.kind, "bind");
        assert!(m.read_only);
        let n = parse_volume_short("db:/var/lib/db").unwrap();
        assert_eq!(n.kind, "volume");
        assert_eq!(parse_volume_short("/scratch").unwrap().source, None);
        assert!(parse_volume_short("a:relative").is_err());
        assert!(parse_volume_short("a:/b:bogus").is_err());
    }
}
