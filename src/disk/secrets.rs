//! Secrets and configs: files given to a container read-only, never put in its image, its
//! environment or its logs. Their contents are read when the container is made (a file, an
//! environment variable of `berth up`, or inline `content`) and kept in the container's own
//! state directory (root only), from where each is bind-mounted read-only at its target:
//! `/run/secrets/NAME` for a secret, `/NAME` for a config, unless the file says otherwise.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::DiskError;
use crate::spec::model::{FileObject, FileRef, Project};

/// One secret or config of a container, with its contents.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Granted {
    /// `secret` or `config`.
    pub kind: &'static str,
    pub name: String,
    pub target: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    #[serde(skip)]
    pub content: Vec<u8>,
}

// Contents never go to a log or an error message.
impl std::fmt::Debug for Granted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Granted")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

fn bad(service: &str, what: &str, message: impl Into<String>) -> DiskError {
    DiskError::Invalid {
        service: service.to_string(),
        message: format!("{what}: {}", message.into()),
    }
}

fn contents(
    service: &str,
    what: &str,
    def: &FileObject,
    project_dir: &Path,
) -> Result<Vec<u8>, DiskError> {
    if let Some(c) = &def.content {
        return Ok(c.clone().into_bytes());
    }
    if let Some(var) = &def.environment {
        return std::env::var_os(var)
            .map(|v| std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()).to_vec())
            .ok_or_else(|| {
                bad(
                    service,
                    what,
                    format!("the environment variable {var} is not set"),
                )
            });
    }
    if let Some(f) = &def.file {
        let p = if Path::new(f).is_absolute() {
            PathBuf::from(f)
        } else {
            project_dir.join(f)
        };
        return std::fs::read(&p).map_err(|e| bad(service, what, format!("{}: {e}", p.display())));
    }
    Err(bad(
        service,
        what,
        "it has no `file`, `environment` or `content` (external secrets need a swarm)",
    ))
}

fn id(service: &str, what: &str, v: Option<&str>) -> Result<u32, DiskError> {
    match v {
        None => Ok(0),
        Some(s) => s
            .parse()
            .map_err(|_| bad(service, what, format!("uid/gid `{s}` must be a number"))),
    }
}

/// The secrets and configs `service` is given, with their contents read now.
pub fn granted(
    project: &Project,
    service: &str,
    project_dir: &Path,
) -> Result<Vec<Granted>, DiskError> {
    let Some(svc) = project.services.get(service) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (kind, refs, defs) in [
        ("secret", &svc.secrets, &project.secrets),
        ("config", &svc.configs, &project.configs),
    ] {
        for r in refs.iter() {
            out.push(grant(kind, service, r, defs, project_dir)?);
        }
    }
    Ok(out)
}

fn grant(
    kind: &'static str,
    service: &str,
    r: &FileRef,
    defs: &std::collections::BTreeMap<String, FileObject>,
    project_dir: &Path,
) -> Result<Granted, DiskError> {
    let what = format!("{kind} {}", r.source);
    let def = defs
        .get(&r.source)
        .ok_or_else(|| bad(service, &what, format!("no such {kind} at the top level")))?;
    let target = match (&r.target, kind) {
        (Some(t), _) if t.starts_with('/') => t.clone(),
        (Some(t), "secret") => format!("/run/secrets/{t}"),
        (Some(t), _) => format!("/{t}"),
        (None, "secret") => format!("/run/secrets/{}", r.source),
        (None, _) => format!("/{}", r.source),
    };
    Ok(Granted {
        kind,
        name: r.source.clone(),
        target,
        uid: id(service, &what, r.uid.as_deref())?,
        gid: id(service, &what, r.gid.as_deref())?,
        mode: r.mode.unwrap_or(0o444),
        content: contents(service, &what, def, project_dir)?,
    })
}

/// Writes `granted` into `<dir>/grants/` (owner and mode as asked; the directory is root's
/// alone) and returns the read-only bind mounts that give them to the container.
pub fn write(dir: &Path, granted: &[Granted]) -> Result<Vec<super::MountSpec>, DiskError> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |g: &Granted, e: std::io::Error| DiskError::Volume {
        volume: format!("{} {}", g.kind, g.name),
        step: "write",
        message: e.to_string(),
    };
    let mut out = Vec::new();
    if granted.is_empty() {
        return Ok(out);
    }
    let d = dir.join("grants");
    std::fs::create_dir_all(&d).map_err(|e| fail(&granted[0], e))?;
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| fail(&granted[0], e))?;
    for (i, g) in granted.iter().enumerate() {
        let f = d.join(format!("{i}-{}-{}", g.kind, g.name));
        std::fs::write(&f, &g.content).map_err(|e| fail(g, e))?;
        std::os::unix::fs::chown(&f, Some(g.uid), Some(g.gid)).map_err(|e| fail(g, e))?;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(g.mode & 0o7777))
            .map_err(|e| fail(g, e))?;
        out.push(super::MountSpec {
            source: super::Source::Bind {
                path: f,
                create: false,
            },
            target: g.target.clone(),
            read_only: true,
            propagation: None,
        });
    }
    Ok(out)
}

/// A digest of each secret's and config's contents as they are now (`x-berth-digest`), so
/// that the services given one are recreated when it changes.
pub fn stamp(project: &mut Project, project_dir: &Path) {
    use sha2::Digest;
    for defs in [&mut project.secrets, &mut project.configs] {
        for (name, def) in defs.iter_mut() {
            if let Ok(c) = contents("-", name, def, project_dir) {
                let d: String = sha2::Sha256::digest(&c)
                    .iter()
                    .take(8)
                    .map(|b| format!("{b:02x}"))
                    .collect();
                def.extra
                    .insert("x-berth-digest".into(), serde_json::Value::String(d));
            }
        }
    }
}
