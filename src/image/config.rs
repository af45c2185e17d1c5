//! The JSON documents of the image formats: our own serde structs rather than `oci-spec`'s,
//! because docker's config carries keys OCI leaves out (`Healthcheck`, `StartInterval`) that
//! berth acts on, and every field here must default when missing (old and hand-made images
//! omit most of them), which builder-style typed structs make awkward.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MT_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// What a container started from an image runs and how, from the image's config. Every field
/// defaults when the image does not set it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageConfig {
    /// `None` when the image sets none; `Some(vec![])` when it explicitly sets an empty one
    /// (compose and docker treat the two differently when a service overrides one of them).
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// `KEY=value` strings, in the image's order.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub stop_signal: Option<String>,
    pub healthcheck: Option<Healthcheck>,
    /// `80/tcp`, `53/udp`, ... sorted.
    pub exposed_ports: Vec<String>,
    /// Mount points the image declares as volumes, sorted.
    pub volumes: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// The image's health check. Durations are `None` when unset or zero (docker's "inherit").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", args...]` or `["CMD-SHELL", command]`.
    pub test: Vec<String>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub start_period: Option<Duration>,
    pub start_interval: Option<Duration>,
    pub retries: Option<u32>,
}

/// An image config (`application/vnd.oci.image.config.v1+json`, or docker's `<id>.json`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawImage {
    pub created: Option<String>,
    pub architecture: Option<String>,
    pub os: Option<String>,
    pub config: Option<RawConfig>,
    pub rootfs: RawRootfs,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawRootfs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct RawConfig {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Option<Vec<String>>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub stop_signal: Option<String>,
    pub healthcheck: Option<RawHealthcheck>,
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    pub labels: Option<BTreeMap<String, String>>,
}

/// Durations are nanoseconds, as docker writes them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct RawHealthcheck {
    pub test: Option<Vec<String>>,
    pub interval: Option<i64>,
    pub timeout: Option<i64>,
    pub start_period: Option<i64>,
    pub start_interval: Option<i64>,
    pub retries: Option<i64>,
}

fn nanos(n: Option<i64>) -> Option<Duration> {
    n.and_then(|n| u64::try_from(n).ok())
        .filter(|&n| n > 0)
        .map(Duration::from_nanos)
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

impl From<RawConfig> for ImageConfig {
    fn from(c: RawConfig) -> ImageConfig {
        ImageConfig {
            entrypoint: c.entrypoint,
            cmd: c.cmd,
            env: c.env.unwrap_or_default(),
            working_dir: non_empty(c.working_dir),
            user: non_empty(c.user),
            stop_signal: non_empty(c.stop_signal),
            healthcheck: c.healthcheck.map(|h| Healthcheck {
                test: h.test.unwrap_or_default(),
                interval: nanos(h.interval),
                timeout: nanos(h.timeout),
                start_period: nanos(h.start_period),
                start_interval: nanos(h.start_interval),
                retries: h
                    .retries
                    .and_then(|r| u32::try_from(r).ok())
                    .filter(|&r| r > 0),
            }),
            exposed_ports: c.exposed_ports.unwrap_or_default().into_keys().collect(),
            volumes: c.volumes.unwrap_or_default().into_keys().collect(),
            labels: c.labels.unwrap_or_default(),
        }
    }
}

/// An OCI descriptor, as found in indexes and manifests.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image index (`index.json`, or a multi-platform manifest list).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Index {
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// An image manifest.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// One image of a docker-save `manifest.json`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct DockerSaveEntry {
    pub config: String,
    pub repo_tags: Option<Vec<String>>,
    pub layers: Vec<String>,
}

/// The `GOARCH` spelling of this machine's architecture, which OCI platforms use.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_healthcheck() {
        let raw: RawImage = serde_json::from_str(
            r#"{"config":{"Cmd":["sh"],"Healthcheck":{"Test":["CMD","true"],"Interval":5000000000,"Retries":3},
                "ExposedPorts":{"80/tcp":{}},"Volumes":{"/data":{}},"Labels":null}}"#,
        )
        .unwrap_or_default();
        let c = ImageConfig::from(raw.config.unwrap_or_default());
        assert_eq!(c.cmd, Some(vec!["sh".to_string()]));
        assert_eq!(c.entrypoint, None);
        assert!(c.env.is_empty() && c.labels.is_empty());
        assert_eq!(c.exposed_ports, ["80/tcp"]);
        assert_eq!(c.volumes, ["/data"]);
        let h = c.healthcheck.unwrap_or_default();
        assert_eq!(h.interval, Some(Duration::from_secs(5)));
        assert_eq!(h.timeout, None);
        assert_eq!(h.retries, Some(3));
        let empty: RawImage = serde_json::from_str("{}").unwrap_or_default();
        assert!(empty.config.is_none() && empty.rootfs.diff_ids.is_empty());
    }
}
