//! Which keys berth acts on. Every key of the Compose Specification is parsed and normalized,
//! but a key that berth accepts and does not act on must not be silently ignored:
//! `berth config --unsupported` lists the ones a project uses, from this table.
//!
//! As each part of berth lands, its keys move from `Planned` to `Acted`.

use serde_json::Value;

use crate::spec::model::Project;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// berth acts on this key.
    Acted,
    /// Accepted now; acted on when the named part of berth lands.
    Planned(&'static str),
    /// Accepted and ignored, for the reason given.
    Ignored(&'static str),
}

const RUNTIME: &str = "the runtime";
const NET: &str = "networking";
const PULL: &str = "registry pulls";

/// Why berth does not act on a service key the typed model leaves in `Service::extra`. A key
/// berth acts on is a field of `spec::model::Service`: it never reaches this table, so the
/// table cannot claim a key is handled when nothing reads it.
pub fn service_key(key: &str) -> Support {
    use Support::*;
    match key {
        // Read by the loader itself, which resolves them before the model is made.
        "extends" | "label_file" => Acted,
        "annotations" | "pid" | "oom_kill_disable" | "attach" => Planned(RUNTIME),
        "external_links" => Planned(NET),
        "platform" | "pull_refresh_after" => Planned(PULL),
        "gpus" => Ignored("berth does not manage GPUs"),
        "runtime" => Ignored("berth is its own runtime"),
        "isolation" | "credential_spec" => Ignored("Windows-only"),
        "userns_mode" => Ignored("user namespaces are not supported yet"),
        "cgroup_parent" => Ignored("berth places cgroups under berth/<project>/"),
        "cpu_count" | "cpu_percent" | "cpu_rt_period" | "cpu_rt_runtime" => {
            Ignored("not enforced by berth")
        }
        "models" | "provider" | "use_api_socket" => Ignored("Docker Desktop features"),
        k if k.starts_with("x-") => Acted,
        _ => Ignored("unknown to berth"),
    }
}

/// Top-level sections.
pub fn top_key(key: &str) -> Support {
    use Support::*;
    match key {
        "name" | "services" | "include" | "version" | "networks" | "volumes" | "disks"
        | "secrets" | "configs" => Acted,
        "models" => Ignored("Docker Desktop feature"),
        k if k.starts_with("x-") => Acted,
        _ => Ignored("unknown to berth"),
    }
}

/// The support of a key of a service's long-form `build:`.
pub fn build_key(key: &str) -> Support {
    use Support::*;
    match key {
        "context" | "dockerfile" | "dockerfile_inline" | "args" | "target" | "labels"
        | "network" | "no_cache" | "pull" | "tags" | "shm_size" | "extra_hosts" => Acted,
        "cache_from" | "cache_to" => {
            Ignored("berth caches every step in its own store; there is no remote cache")
        }
        "platforms" => Ignored("berth builds for this host's platform"),
        "isolation" => Ignored("Windows-only"),
        "ssh" | "secrets" | "additional_contexts" | "privileged" | "ulimits" | "entitlements" => {
            Planned("builds")
        }
        k if k.starts_with("x-") => Acted,
        _ => Ignored("unknown to berth"),
    }
}

/// `(key path, support)` for every key the project uses that berth does not act on.
pub fn unsupported(project: &Project) -> Vec<(String, Support)> {
    let mut out = Vec::new();
    let v = serde_json::to_value(project).unwrap_or(Value::Null);
    if let Value::Object(top) = &v {
        for k in top.keys() {
            let s = top_key(k);
            if s != Support::Acted {
                out.push((k.clone(), s));
            }
        }
        if let Some(Value::Object(services)) = top.get("services") {
            for (name, svc) in services {
                // The keys berth acts on are the model's fields; what is left in `extra` is
                // what it does not act on, each with its reason.
                if let Some(typed) = project.services.get(name) {
                    for k in typed.extra.keys() {
                        let s = service_key(k);
                        if s != Support::Acted {
                            out.push((format!("services.{name}.{k}"), s));
                        }
                    }
                }
                if let Value::Object(keys) = svc {
                    if let Some(driver) = keys
                        .get("logging")
                        .and_then(|l| l.get("driver"))
                        .and_then(Value::as_str)
                        .filter(|d| !matches!(*d, "json-file" | "local"))
                    {
                        out.push((
                            format!("services.{name}.logging.driver"),
                            Support::Ignored(if driver == "none" {
                                "berth always keeps a container's output in its own JSON log (rotated by logging.options max-size and max-file)"
                            } else {
                                "berth keeps a container's output in its own JSON log (rotated by logging.options max-size and max-file); it sends it nowhere else"
                            }),
                        ));
                    }
                    if let Some(Value::Object(build)) = keys.get("build") {
                        for k in build.keys() {
                            let s = build_key(k);
                            if s != Support::Acted {
                                out.push((format!("services.{name}.build.{k}"), s));
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// A new file `name` in directory `dir`, write-only and 0600 until its owner and mode are
/// set: O_EXCL and O_NOFOLLOW, so nothing already there (a symlink least of all) is
/// written through. Every unpacker and copier that writes into a tree by descriptor uses it.
pub fn create_new_at<P: rustix::path::Arg>(
    dir: impl std::os::fd::AsFd,
    name: P,
) -> rustix::io::Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags};
    rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map(std::fs::File::from)
}

/// Sizes as Docker prints them (binary units, up to two decimals): `64.00MiB`.
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.2}{}", UNITS[u])
    }
}
