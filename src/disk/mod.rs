//! A service's mounts: named and anonymous volumes, bind mounts and tmpfs. What a service
//! mounts is worked out here from the project file (`mounts`, pure); the host side (volume
//! directories, bind sources) is made ready by `prepare`, and the mounts themselves are made
//! inside the container's mount namespace by its setup process (the Linux runtime's `mounts`).
//!
//! A volume lives in `<root>/volumes/<name>/`: `_data/` is what the container sees, and
//! `volume.json` says whose it is. Named volumes outlive `down`; `down -v` removes the
//! project's own (not `external` ones).

pub mod private;
pub mod secrets;
pub mod shared;

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::spec::model::{Mount, Project};

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("services.{service}.volumes: {message}")]
    Invalid { service: String, message: String },
    #[error("volume {volume}: {step}: {message}")]
    Volume {
        volume: String,
        step: &'static str,
        message: String,
    },
    #[error("private disk {disk}: {step}: {message}")]
    Disk {
        disk: String,
        step: &'static str,
        message: String,
    },
    #[error("bind mount of {source_path} to {target}: {message}")]
    Bind {
        source_path: String,
        target: String,
        message: String,
    },
}

/// Where a mount's content comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    /// A host path; `create`: make it (a directory) if it is missing.
    Bind { path: PathBuf, create: bool },
    /// A volume by its name on the host; `copy`: fill it from the image on first use.
    Volume {
        name: String,
        project: String,
        anonymous: bool,
        external: bool,
        #[serde(default)]
        labels: BTreeMap<String, String>,
        copy: bool,
    },
    Tmpfs {
        size: Option<u64>,
        mode: Option<u32>,
    },
    /// A shared disk: its baseline from `seed`, each container's writes in a cache of `cache`
    /// bytes.
    Shared {
        name: String,
        project: String,
        seed: PathBuf,
        cache: Option<u64>,
    },
    /// A private disk by its name on the host.
    Private {
        name: String,
        project: String,
        size: u64,
        external: bool,
        #[serde(default)]
        labels: BTreeMap<String, String>,
    },
}

/// One mount of a service, as the file asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    pub source: Source,
    /// The absolute path inside the container.
    pub target: String,
    pub read_only: bool,
    /// `shared`, `rslave`...; None is private, as Docker's default.
    #[serde(default)]
    pub propagation: Option<String>,
}

/// A mount made ready on the host, for the setup process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    pub kind: Kind,
    pub target: String,
    pub read_only: bool,
    #[serde(default)]
    pub propagation: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Bind `source` (a host path). `fill`: a fresh volume, to be filled from the image's
    /// content at the target, then marked as filled by creating the file `fill`.
    Bind {
        source: PathBuf,
        #[serde(default)]
        fill: Option<PathBuf>,
    },
    Tmpfs {
        size: Option<u64>,
        mode: Option<u32>,
    },
    /// An ext4 file system on a block device (a private disk's loop device).
    Block { device: PathBuf },
    /// An overlay: `lower` (a shared disk's baseline, never written) under an upper layer in a
    /// tmpfs of `cache` bytes made for this run of the container.
    Overlay { lower: PathBuf, cache: u64 },
}

fn invalid(service: &str, message: impl Into<String>) -> DiskError {
    DiskError::Invalid {
        service: service.to_string(),
        message: message.into(),
    }
}

/// The name of the anonymous volume of `service` at `target`.
pub fn anonymous_name(project: &str, service: &str, target: &str) -> String {
    format!(
        "{project}_{service}_anon_{}",
        short_hash(&[project, service, target])
    )
}

/// A short stable hash, for the names of anonymous volumes.
fn short_hash(parts: &[&str]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The mounts of `service`: its `volumes:` (short and long syntax), those of the services it
/// names in `volumes_from:`, its disks and its `tmpfs:`, in order.
pub fn mounts(project: &Project, service: &str) -> Result<Vec<MountSpec>, DiskError> {
    let Some(svc) = project.services.get(service) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for m in &svc.volumes {
        out.push(mount_of(project, service, m)?);
    }
    for entry in &svc.volumes_from {
        let Some(other) = crate::spec::validate::volumes_from_service(entry) else {
            return Err(invalid(
                service,
                format!("volumes_from `{entry}`: only services of the project can be named"),
            ));
        };
        let ro = entry.ends_with(":ro");
        let theirs = project.services.get(other).ok_or_else(|| {
            invalid(
                service,
                format!("volumes_from `{entry}`: no service {other}"),
            )
        })?;
        // Their volumes and bind mounts (the same volumes: the data is shared), not their
        // disks or tmpfs, as Docker copies them.
        for m in &theirs.volumes {
            if m.kind == "tmpfs" || out.iter().any(|o: &MountSpec| o.target == m.target) {
                continue;
            }
            let mut spec = mount_of(project, other, m)?;
            spec.read_only |= ro;
            out.push(spec);
        }
    }
    for dm in &svc.disks {
        let Some(def) = project.disks.get(&dm.source) else {
            return Err(invalid(
                service,
                format!("no disk `{}` under the top-level `disks:`", dm.source),
            ));
        };
        let name = def
            .name
            .clone()
            .unwrap_or_else(|| format!("{}_{}", project.name, dm.source));
        let source = match def.kind {
            crate::spec::model::DiskKind::Private => Source::Private {
                name,
                project: project.name.clone(),
                size: def.size.unwrap_or(0),
                external: def.external.unwrap_or(false),
                labels: def.labels.clone(),
            },
            crate::spec::model::DiskKind::Shared => Source::Shared {
                name,
                project: project.name.clone(),
                seed: PathBuf::from(def.source.clone().unwrap_or_default()),
                cache: def.size,
            },
        };
        out.push(MountSpec {
            source,
            target: dm.target.clone(),
            read_only: dm.read_only,
            propagation: None,
        });
    }
    for t in &svc.tmpfs {
        // `/run` or `/run:size=64m,mode=1777`, as `docker run --tmpfs`.
        let (target, opts) = t.split_once(':').unwrap_or((t.as_str(), ""));
        let (mut size, mut mode) = (None, None);
        for o in opts.split(',').filter(|o| !o.is_empty()) {
            match o.split_once('=') {
                Some(("size", v)) => {
                    size = Some(
                        crate::spec::units::parse_size(v)
                            .map_err(|e| invalid(service, format!("tmpfs `{t}`: {e}")))?,
                    )
                }
                Some(("mode", v)) => {
                    mode = Some(u32::from_str_radix(v, 8).map_err(|_| {
                        invalid(service, format!("tmpfs `{t}`: mode `{v}` is not octal"))
                    })?)
                }
                // rw, noexec, uid=... are accepted as Docker does; berth's tmpfs is always
                // nosuid, nodev and noexec, and root-owned.
                _ => {}
            }
        }
        if !target.starts_with('/') {
            return Err(invalid(
                service,
                format!("tmpfs `{t}`: the path must be absolute"),
            ));
        }
        out.push(MountSpec {
            source: Source::Tmpfs { size, mode },
            target: target.to_string(),
            read_only: false,
            propagation: None,
        });
    }
    Ok(out)
}

fn mount_of(project: &Project, service: &str, m: &Mount) -> Result<MountSpec, DiskError> {
    let source = match m.kind.as_str() {
        "bind" => {
            let path = m.source.as_deref().ok_or_else(|| {
                invalid(
                    service,
                    format!("the bind mount to {} has no source", m.target),
                )
            })?;
            Source::Bind {
                path: PathBuf::from(path),
                create: m
                    .bind
                    .as_ref()
                    .and_then(|b| b.create_host_path)
                    .unwrap_or(false),
            }
        }
        "volume" => {
            let copy = !m.volume.as_ref().and_then(|v| v.nocopy).unwrap_or(false);
            match m.source.as_deref().filter(|s| !s.is_empty()) {
                Some(key) => {
                    let def = project.volumes.get(key).cloned().unwrap_or_default();
                    let external = def.external.unwrap_or(false);
                    let name = def.name.clone().unwrap_or_else(|| {
                        if external {
                            key.to_string()
                        } else {
                            format!("{}_{key}", project.name)
                        }
                    });
                    Source::Volume {
                        name,
                        project: project.name.clone(),
                        anonymous: false,
                        external,
                        labels: def.labels.clone(),
                        copy,
                    }
                }
                // Anonymous: one per service and target, so a recreated container gets the
                // same data back (as Compose reuses them); `down -v` removes it.
                None => Source::Volume {
                    name: anonymous_name(&project.name, service, &m.target),
                    project: project.name.clone(),
                    anonymous: true,
                    external: false,
                    labels: BTreeMap::new(),
                    copy,
                },
            }
        }
        "tmpfs" => Source::Tmpfs {
            size: m.tmpfs.as_ref().and_then(|t| t.size),
            mode: m
                .tmpfs
                .as_ref()
                .and_then(|t| t.mode.as_ref())
                .and_then(|v| match v {
                    serde_json::Value::Number(n) => n.as_u64().map(|n| n as u32),
                    serde_json::Value::String(s) => u32::from_str_radix(s, 8).ok(),
                    _ => None,
                }),
        },
        other => {
            return Err(invalid(
                service,
                format!(
                    "mount type `{other}` for {} is not supported (bind, volume, tmpfs)",
                    m.target
                ),
            ));
        }
    };
    Ok(MountSpec {
        source,
        target: m.target.clone(),
        read_only: m.read_only,
        propagation: m.bind.as_ref().and_then(|b| b.propagation.clone()),
    })
}

/// What berth knows of a volume (`<root>/volumes/<name>/volume.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeState {
    pub name: String,
    pub project: String,
    #[serde(default)]
    pub anonymous: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub created_at: u64,
}

pub fn volumes_dir(root: &Path) -> PathBuf {
    root.join("volumes")
}

fn vstep(volume: &str, step: &'static str, e: impl std::fmt::Display) -> DiskError {
    DiskError::Volume {
        volume: volume.to_string(),
        step,
        message: e.to_string(),
    }
}

/// Makes the host side of `mounts` ready: volumes exist (an `external` one must already),
/// bind sources exist (or are made when the file says so), private disks are attached to loop
/// devices. Idempotent; run at each start. The descriptors returned (the loop devices) are
/// held until the container has mounted what they stand for.
pub fn prepare(
    root: &Path,
    mounts: &[MountSpec],
) -> Result<(Vec<Resolved>, Vec<OwnedFd>), DiskError> {
    let mut out = Vec::new();
    let mut held = Vec::new();
    for m in mounts {
        let kind = match &m.source {
            Source::Bind { path, create } => {
                if !path.exists() {
                    if *create {
                        std::fs::create_dir_all(path).map_err(|e| DiskError::Bind {
                            source_path: path.display().to_string(),
                            target: m.target.clone(),
                            message: format!("cannot create it: {e}"),
                        })?;
                    } else {
                        return Err(DiskError::Bind {
                            source_path: path.display().to_string(),
                            target: m.target.clone(),
                            message: "the source does not exist (long syntax: set \
                                      bind.create_host_path: true to have it made)"
                                .into(),
                        });
                    }
                }
                Kind::Bind {
                    source: path.clone(),
                    fill: None,
                }
            }
            Source::Volume {
                name,
                project,
                anonymous,
                external,
                labels,
                copy,
            } => {
                let dir = volumes_dir(root).join(name);
                let data = dir.join("_data");
                if !data.is_dir() {
                    if *external {
                        return Err(vstep(
                            name,
                            "find",
                            "it is declared `external: true` but does not exist; create it \
                             first (the project that owns it, or a volume of that name)",
                        ));
                    }
                    std::fs::create_dir_all(&data).map_err(|e| vstep(name, "create", e))?;
                    write_volume_state(&dir, name, project, *anonymous, labels)?;
                }
                let filled = dir.join("filled");
                Kind::Bind {
                    source: data,
                    fill: (*copy && !filled.exists()).then_some(filled),
                }
            }
            Source::Tmpfs { size, mode } => Kind::Tmpfs {
                size: *size,
                mode: *mode,
            },
            Source::Private {
                name,
                project,
                size,
                external,
                labels,
            } => {
                let (device, fd) = private::prepare(root, name, project, *size, labels, *external)?;
                held.push(fd);
                Kind::Block { device }
            }
            Source::Shared {
                name,
                project,
                seed,
                cache,
            } => Kind::Overlay {
                lower: shared::prepare(root, name, project, seed)?,
                cache: cache.unwrap_or(shared::DEFAULT_CACHE),
            },
        };
        out.push(Resolved {
            kind,
            target: m.target.clone(),
            read_only: m.read_only,
            propagation: m.propagation.clone(),
        });
    }
    Ok((out, held))
}

/// Records the volume whose directory `dir` (holding `_data`) was made outside `prepare` (a
/// project import), as filled: its data is what the container is to see, not to be covered
/// with the image's content on first use.
pub fn record_volume(
    dir: &Path,
    name: &str,
    project: &str,
    anonymous: bool,
    labels: &BTreeMap<String, String>,
) -> Result<(), DiskError> {
    write_volume_state(dir, name, project, anonymous, labels)?;
    std::fs::write(dir.join("filled"), b"").map_err(|e| vstep(name, "record", e))
}

/// Writes `volume.json` for a volume made now.
fn write_volume_state(
    dir: &Path,
    name: &str,
    project: &str,
    anonymous: bool,
    labels: &BTreeMap<String, String>,
) -> Result<(), DiskError> {
    let st = VolumeState {
        name: name.to_string(),
        project: project.to_string(),
        anonymous,
        labels: labels.clone(),
        created_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let text = serde_json::to_vec_pretty(&st).map_err(|e| vstep(name, "record", e))?;
    std::fs::write(dir.join("volume.json"), text).map_err(|e| vstep(name, "record", e))
}

/// Every volume recorded under `root`.
pub fn volumes(root: &Path) -> Vec<VolumeState> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(volumes_dir(root)) {
        for e in rd.flatten() {
            if let Ok(t) = std::fs::read_to_string(e.path().join("volume.json"))
                && let Ok(v) = serde_json::from_str::<VolumeState>(&t)
            {
                out.push(v);
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Bytes the files under `p` take on the host.
pub fn tree_usage(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    let own = md.blocks() * 512;
    if !md.is_dir() {
        return own;
    }
    own + std::fs::read_dir(p)
        .map(|d| d.flatten().map(|e| tree_usage(&e.path())).sum::<u64>())
        .unwrap_or(0)
}

/// Bytes a volume's data takes on the host.
pub fn volume_usage(root: &Path, name: &str) -> u64 {
    tree_usage(&volumes_dir(root).join(name).join("_data"))
}

/// Copies the tree under `from` into the existing directory `to`: modes (set-id bits too),
/// owners, modification times and symlinks kept, symlinks never followed; devices, fifos and
/// sockets left out.
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    copy_tree_with(from, to, false)
}

/// `copy_tree`, with the set-id bits dropped when `strip_setid` (a tree from an archive going
/// into a directory of the host's: no one's setuid binary is planted there). Every entry is
/// made new (O_EXCL, never through a symlink at its path) and its owner, mode and times set
/// on its own descriptor.
pub fn copy_tree_with(from: &Path, to: &Path, strip_setid: bool) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let mask = if strip_setid { 0o1777 } else { 0o7777 };
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let src = e.path();
        let dst = to.join(e.file_name());
        let md = std::fs::symlink_metadata(&src)?;
        let ft = md.file_type();
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
            std::os::unix::fs::lchown(&dst, Some(md.uid()), Some(md.gid()))?;
            continue;
        }
        let f = if ft.is_dir() {
            std::fs::create_dir(&dst)?;
            copy_tree_with(&src, &dst, strip_setid)?;
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
                .open(&dst)?
        } else if ft.is_file() {
            let mut input = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&src)?;
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&dst)?;
            std::io::copy(&mut input, &mut out)?;
            out
        } else {
            continue;
        };
        // Owner before mode: a chown clears the set-id bits.
        std::os::unix::fs::fchown(&f, Some(md.uid()), Some(md.gid()))?;
        f.set_permissions(std::fs::Permissions::from_mode(md.mode() & mask))?;
        f.set_times(
            std::fs::FileTimes::new()
                .set_accessed(md.accessed()?)
                .set_modified(md.modified()?),
        )?;
    }
    Ok(())
}

/// Removes the shared disks `project` made (`down -v`). Returns their names.
pub fn remove_project_shared(root: &Path, project: &str) -> Result<Vec<String>, DiskError> {
    let mut gone = Vec::new();
    for (name, owner, _) in shared::list(root) {
        if owner == project {
            std::fs::remove_dir_all(private::disks_dir(root).join(&name))
                .map_err(|e| vstep(&name, "remove", e))?;
            gone.push(name);
        }
    }
    Ok(gone)
}

/// Removes one volume with its data (`berth disk rm`).
pub fn remove_volume(root: &Path, name: &str) -> Result<(), DiskError> {
    std::fs::remove_dir_all(volumes_dir(root).join(name)).map_err(|e| vstep(name, "remove", e))
}

/// Removes the volumes `project` made (`down -v`); external ones belong to someone else and
/// were never recorded as the project's. Returns their names.
pub fn remove_project_volumes(root: &Path, project: &str) -> Result<Vec<String>, DiskError> {
    let mut removed = Vec::new();
    for v in volumes(root).into_iter().filter(|v| v.project == project) {
        std::fs::remove_dir_all(volumes_dir(root).join(&v.name))
            .map_err(|e| vstep(&v.name, "remove", e))?;
        removed.push(v.name);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_anonymous_bind_and_tmpfs_mounts_are_planned_as_compose_means_them() {
        let p = crate::net::tests::project(
            "name: p\nservices:\n  web:\n    image: x\n    volumes:\n      - data:/data\n      - /srv/www:/www:ro\n      - /cache\n      - type: volume\n        source: data\n        target: /raw\n        volume: {nocopy: true}\n    tmpfs: ['/run:size=8m,mode=1777']\nvolumes:\n  data:\n    labels: {a: b}\n",
        );
        let m = mounts(&p, "web").unwrap();
        assert_eq!(m.len(), 5);
        assert!(
            matches!(&m[0].source, Source::Volume { name, anonymous: false, copy: true, .. } if name == "p_data")
        );
        assert!(
            matches!(&m[1].source, Source::Bind { path, create: true } if path == Path::new("/srv/www"))
        );
        assert!(m[1].read_only);
        assert!(matches!(
            &m[2].source,
            Source::Volume {
                anonymous: true,
                ..
            }
        ));
        assert!(matches!(&m[3].source, Source::Volume { copy: false, .. }));
        assert_eq!(
            m[4].source,
            Source::Tmpfs {
                size: Some(8 << 20),
                mode: Some(0o1777)
            }
        );
    }

    #[test]
    fn copy_tree_keeps_set_id_bits_owners_and_times() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: chown needs root");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        std::fs::create_dir_all(a.join("d")).unwrap();
        let f = a.join("d/tool");
        std::fs::write(&f, "x").unwrap();
        std::os::unix::fs::chown(&f, Some(7), Some(8)).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o4755)).unwrap();
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
        std::fs::File::open(&f)
            .unwrap()
            .set_times(std::fs::FileTimes::new().set_modified(old))
            .unwrap();
        std::fs::create_dir_all(&b).unwrap();
        copy_tree(&a, &b).unwrap();
        let md = std::fs::metadata(b.join("d/tool")).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o4755);
        assert_eq!((md.uid(), md.gid()), (7, 8));
        assert_eq!(md.mtime(), 1_600_000_000);
    }

    #[test]
    fn volumes_from_shares_the_other_services_volumes() {
        let p = crate::net::tests::project(
            "name: p\nservices:\n  a:\n    image: x\n    volumes: [data:/data, /anon]\n    tmpfs: [/t]\n  b:\n    image: x\n    volumes_from: ['a:ro']\nvolumes:\n  data: {}\n",
        );
        let a = mounts(&p, "a").unwrap();
        let b = mounts(&p, "b").unwrap();
        assert_eq!(b.len(), 2, "{b:?}");
        assert_eq!(b[0].source, a[0].source);
        assert_eq!(b[1].source, a[1].source, "the same anonymous volume");
        assert!(b.iter().all(|m| m.read_only));
    }
}
