//! Moving a project to another host: `berth export` writes one archive of it, `berth import`
//! restores it under another state root (and another name, if asked).
//!
//! The archive is a plain tar stream, written and read in one pass so that
//! `berth export | ssh other berth import -` works:
//!
//! ```text
//! berth-export.json        what this is: format, version, project name, its compose files
//! project/...              the project's files: compose files, .env, env files, secrets and
//!                          configs, bind-mount sources, build contexts and shared-disk seeds
//!                          that lie inside the project directory
//! images/...               an OCI image layout of every image a service uses (blobs once)
//! volumes/<n>/...          each volume's tree (named and anonymous volumes)
//! disks/<n>.img            each private disk's image, its data extents only (sparse format)
//! berth-manifest.json      last: the sha256 and size of every member, a digest of each tree,
//!                          and what each volume and disk is to the project
//! ```
//!
//! The manifest comes last because its checksums are known only once everything is written;
//! an importer stages every member as it reads it, hashing on the way, and commits nothing
//! until the manifest has vouched for all of it. A truncated archive has no manifest; a
//! flipped byte breaks a checksum. Volumes and disks are named in the archive by what they are
//! to the project (`volumes.cache`, the anonymous volume of `web` at `/data`, `disks.pgdata`),
//! not by their names on the host, so an import under another project name gets the names
//! that project would give them.

pub mod export;
pub mod import;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::image::Digest;
use crate::spec::model::{DiskKind, Project};

pub const FORMAT: &str = "berth-export";
pub const VERSION: u32 = 1;
pub const HEADER: &str = "berth-export.json";
pub const MANIFEST: &str = "berth-manifest.json";
pub const PROJECT: &str = "project";
/// The first bytes of a disk member.
pub const SPARSE_MAGIC: &[u8; 12] = b"BERTHSPARSE1";

#[derive(Debug, thiserror::Error)]
pub enum PortableError {
    #[error("{step}: {path}: {source}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the archive: {0}")]
    Write(#[source] std::io::Error),
    #[error("the archive is truncated or unreadable ({0}); nothing was imported")]
    Read(#[source] std::io::Error),
    #[error("{0}")]
    Image(#[from] crate::image::ImageError),
    #[error("{0}")]
    Disk(#[from] crate::disk::DiskError),
    #[error("not a berth project export: {0}")]
    NotExport(String),
    #[error("the archive is damaged: {0}; nothing was imported")]
    Damaged(String),
    #[error("{0}")]
    Refused(String),
    #[error("the exported project does not load: {0}")]
    Load(String),
}

pub fn io_err(
    step: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> PortableError {
    let path = path.into();
    move |source| PortableError::Io { step, path, source }
}

/// The first member: enough to know what the archive is before reading the rest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    pub project: String,
    /// The project's compose files, relative to its directory, in merge order.
    pub files: Vec<String>,
    pub created: u64,
    pub berth: String,
    /// What follows, so an importer can refuse (a name taken here) before reading any of it.
    pub images: Vec<ImageUse>,
    pub volumes: Vec<VolumeEntry>,
    pub disks: Vec<DiskEntry>,
}

/// What a volume or a disk is to its project.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Item {
    /// `volumes.<key>`
    Volume { key: String },
    /// The anonymous volume of `service` at `target`.
    Anonymous { service: String, target: String },
    /// `disks.<key>` (a private disk)
    Disk { key: String },
}

impl std::fmt::Display for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Item::Volume { key } => write!(f, "volume {key}"),
            Item::Anonymous { service, target } => {
                write!(f, "the anonymous volume of {service} at {target}")
            }
            Item::Disk { key } => write!(f, "private disk {key}"),
        }
    }
}

/// The size and sha256 of a member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sum {
    pub size: u64,
    pub sha256: Digest,
}

/// A digest over every entry of a tree (names, types, modes, owners, times, link targets and
/// contents, in archive order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeSum {
    pub entries: u64,
    pub bytes: u64,
    pub sha256: Digest,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumeEntry {
    pub n: u32,
    pub item: Item,
    /// Its name on the exporting host.
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskEntry {
    pub n: u32,
    pub item: Item,
    pub name: String,
    /// The disk's size (the image's length).
    pub size: u64,
    /// Bytes of data extents in the archive.
    pub data: u64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The image a service uses, by the reference the file gives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageUse {
    pub service: String,
    pub reference: String,
    pub id: String,
}

/// The last member.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub project: String,
    /// Every member outside a tree, by name.
    pub members: BTreeMap<String, Sum>,
    /// `project`, `volumes/<n>`.
    pub trees: BTreeMap<String, TreeSum>,
}

/// The volumes and private disks `project` owns, with their names on the host. External ones
/// belong to no project and are not moved with it.
pub fn items(project: &Project) -> Vec<(Item, String)> {
    let mut out = Vec::new();
    for (key, def) in &project.volumes {
        if def.external.unwrap_or(false) {
            continue;
        }
        let name = def
            .name
            .clone()
            .unwrap_or_else(|| format!("{}_{key}", project.name));
        out.push((Item::Volume { key: key.clone() }, name));
    }
    for (service, svc) in &project.services {
        for m in &svc.volumes {
            if m.kind == "volume" && m.source.as_deref().is_none_or(str::is_empty) {
                out.push((
                    Item::Anonymous {
                        service: service.clone(),
                        target: m.target.clone(),
                    },
                    crate::disk::anonymous_name(&project.name, service, &m.target),
                ));
            }
        }
    }
    for (key, def) in &project.disks {
        if def.kind != DiskKind::Private || def.external.unwrap_or(false) {
            continue;
        }
        let name = def
            .name
            .clone()
            .unwrap_or_else(|| format!("{}_{key}", project.name));
        out.push((Item::Disk { key: key.clone() }, name));
    }
    out.sort();
    out.dedup();
    out
}

/// The name on this host of `item`, which was `old_name` in project `old`, for project `new`:
/// a name the project gave by default follows the project's name; one the file sets
/// (`name:`) stays.
pub fn renamed(item: &Item, old_name: &str, old: &str, new: &str) -> String {
    match item {
        Item::Anonymous { service, target } => crate::disk::anonymous_name(new, service, target),
        Item::Volume { key } | Item::Disk { key } => {
            if old_name == format!("{old}_{key}") {
                format!("{new}_{key}")
            } else {
                old_name.to_string()
            }
        }
    }
}

/// The image reference of a service in project `new` that used `reference` in project `old`:
/// a built image is named after its project (`PROJECT-SERVICE`).
pub fn renamed_image(service: &str, reference: &str, old: &str, new: &str) -> String {
    if reference == format!("{old}-{service}") {
        format!("{new}-{service}")
    } else {
        reference.to_string()
    }
}

/// The kinds of tree entry, as hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
    Symlink,
    Hardlink,
}

/// The metadata of a tree entry that its digest covers.
#[derive(Debug, Clone)]
pub struct EntryMeta<'a> {
    pub rel: &'a str,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub size: u64,
    pub link: &'a str,
}

/// Feeds an entry's metadata to a tree's hasher (its content follows).
pub fn hash_entry(h: &mut Sha256, m: &EntryMeta) {
    let kind = match m.kind {
        EntryKind::Dir => 'd',
        EntryKind::File => 'f',
        EntryKind::Symlink => 'l',
        EntryKind::Hardlink => 'h',
    };
    h.update(
        format!(
            "{}\0{kind}\0{:o}\0{}\0{}\0{}\0{}\0{}\0",
            m.rel,
            m.mode & 0o7777,
            m.uid,
            m.gid,
            m.mtime,
            m.size,
            m.link
        )
        .as_bytes(),
    );
}

/// The header of a disk member: the image's length and its data extents (offset, length),
/// which follow in order.
pub fn sparse_header(len: u64, extents: &[(u64, u64)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(28 + 16 * extents.len());
    v.extend_from_slice(SPARSE_MAGIC);
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(&(extents.len() as u64).to_le_bytes());
    for (o, l) in extents {
        v.extend_from_slice(&o.to_le_bytes());
        v.extend_from_slice(&l.to_le_bytes());
    }
    v
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_name_volumes_and_disks_as_the_project_does() {
        let p = crate::net::tests::project(
            "name: p\nservices:\n  web:\n    image: x\n    volumes: [data:/data, /cache]\n    disks: [db:/db]\nvolumes:\n  data: {}\n  ext: {external: true}\n  named: {name: fixed}\ndisks:\n  db: {kind: private, size: 1g}\n",
        );
        let got = items(&p);
        let names: Vec<&str> = got.iter().map(|(_, n)| n.as_str()).collect();
        assert!(names.contains(&"p_data"), "{names:?}");
        assert!(names.contains(&"fixed"));
        assert!(names.contains(&"p_db"));
        assert!(!names.iter().any(|n| n.contains("ext")));
        assert!(got.iter().any(|(i, n)| matches!(i, Item::Anonymous { service, target } if service == "web" && target == "/cache") && n == &crate::disk::anonymous_name("p", "web", "/cache")));
        // Another project name gives other host names to the same items.
        let q = crate::net::tests::project(
            "name: q\nservices:\n  web:\n    image: x\n    volumes: [data:/data, /cache]\n    disks: [db:/db]\nvolumes:\n  data: {}\n  ext: {external: true}\n  named: {name: fixed}\ndisks:\n  db: {kind: private, size: 1g}\n",
        );
        let other = items(&q);
        assert_eq!(
            got.iter().map(|(i, _)| i).collect::<Vec<_>>(),
            other.iter().map(|(i, _)| i).collect::<Vec<_>>()
        );
        assert!(other.iter().any(|(_, n)| n == "q_db"));
    }

    #[test]
    fn renaming_follows_the_project_only_for_default_names() {
        let v = Item::Volume { key: "data".into() };
        assert_eq!(renamed(&v, "p_data", "p", "q"), "q_data");
        assert_eq!(renamed(&v, "fixed", "p", "q"), "fixed");
        let a = Item::Anonymous {
            service: "web".into(),
            target: "/x".into(),
        };
        let old = crate::disk::anonymous_name("p", "web", "/x");
        assert_eq!(
            renamed(&a, &old, "p", "q"),
            crate::disk::anonymous_name("q", "web", "/x")
        );
        // The same as `items` gives the project under its new name.
        let q = crate::net::tests::project(
            "name: q\nservices:\n  web:\n    image: x\n    volumes: [data:/data, /x]\nvolumes:\n  data: {}\n",
        );
        let names: Vec<String> = items(&q).into_iter().map(|(_, n)| n).collect();
        assert!(names.contains(&renamed(&v, "p_data", "p", "q")));
        assert!(names.contains(&renamed(&a, &old, "p", "q")));
        assert_eq!(renamed_image("app", "p-app", "p", "q"), "q-app");
        assert_eq!(renamed_image("app", "busybox", "p", "q"), "busybox");
    }

    #[test]
    fn sparse_header_layout() {
        let h = sparse_header(1 << 30, &[(0, 4096), (8192, 512)]);
        assert_eq!(h.len(), 28 + 32);
        assert_eq!(&h[..12], SPARSE_MAGIC);
        assert_eq!(u64::from_le_bytes(h[12..20].try_into().unwrap()), 1 << 30);
        assert_eq!(u64::from_le_bytes(h[20..28].try_into().unwrap()), 2);
    }
}
