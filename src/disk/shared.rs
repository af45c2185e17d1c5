//! Shared disks: one baseline, copied once from the seed directory into
//! `<root>/disks/<name>/base-<digest>/`, mounted by many containers at once as the read-only
//! lower layer of an overlay. Each container's writes go to an upper layer in a tmpfs made in
//! that container's mount namespace. No other container sees them, the baseline is never
//! written, and they are gone when the container stops, since a restart makes a new
//! namespace. The tmpfs is as big as the disk's `size` (default 64 MiB), and its pages count
//! against the container's memory.
//!
//! A seed that changed gets a new baseline under a new digest. The digest is stamped into the
//! project model when it loads (`stamp`), so the services that use the disk hash differently
//! and are recreated on the next `up`.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::DiskError;

/// The default size of a container's write cache on a shared disk.
pub const DEFAULT_CACHE: u64 = 64 << 20;

fn fail(disk: &str, step: &'static str, e: impl std::fmt::Display) -> DiskError {
    DiskError::Disk {
        disk: disk.to_string(),
        step,
        message: e.to_string(),
    }
}

/// A digest of a seed directory's tree: names, types, sizes, modes, owners, modification times
/// and link targets, without reading file contents (a seed of gigabytes is stamped in
/// milliseconds; an edit changes the mtime).
pub fn seed_digest(seed: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = seed.join(&rel);
        let mut names: Vec<_> = fs::read_dir(&dir)?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for n in names {
            let r = rel.join(&n);
            let md = fs::symlink_metadata(seed.join(&r))?;
            h.update(r.to_string_lossy().as_bytes());
            h.update(
                format!(
                    "\0{:o} {} {} {} {}.{}\0",
                    md.mode(),
                    md.uid(),
                    md.gid(),
                    md.len(),
                    md.mtime(),
                    md.mtime_nsec()
                )
                .as_bytes(),
            );
            if md.file_type().is_symlink() {
                h.update(fs::read_link(seed.join(&r))?.to_string_lossy().as_bytes());
            } else if md.is_dir() {
                stack.push(r);
            }
        }
    }
    Ok(h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The seed of a shared disk, relative paths taken from the project directory.
pub fn seed_path(project_dir: &Path, source: &str) -> PathBuf {
    let p = Path::new(source);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        project_dir.join(p)
    }
}

/// Records each shared disk's seed digest in the model (`x-berth-seed`), so that the services
/// mounting it hash differently once the seed changes, and makes its seed path absolute. A
/// seed that cannot be read is left unstamped; `prepare` reports it.
pub fn stamp(project: &mut crate::spec::model::Project, project_dir: &Path) {
    for def in project.disks.values_mut() {
        if def.kind != crate::spec::model::DiskKind::Shared {
            continue;
        }
        let Some(src) = def.source.clone() else {
            continue;
        };
        let seed = seed_path(project_dir, &src);
        if let Ok(d) = seed_digest(&seed) {
            def.extra
                .insert("x-berth-seed".into(), serde_json::Value::String(d));
        }
        // The runtime is not told the project directory: the seed goes to it absolute.
        def.source = Some(seed.to_string_lossy().into_owned());
    }
}

/// The baseline of the shared disk `name` for the seed as it is now, copied on first use.
pub fn prepare(root: &Path, name: &str, project: &str, seed: &Path) -> Result<PathBuf, DiskError> {
    if !seed.is_dir() {
        return Err(fail(
            name,
            "read the seed",
            format!("{} is not a directory", seed.display()),
        ));
    }
    let digest = seed_digest(seed).map_err(|e| fail(name, "read the seed", e))?;
    let dir = super::private::disks_dir(root).join(name);
    let base = dir.join(format!("base-{digest}"));
    if base.is_dir() {
        return Ok(base);
    }
    fs::create_dir_all(&dir).map_err(|e| fail(name, "create", e))?;
    // The containers of one `up` start at once: one of them copies, the others wait for it.
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))
        .map_err(|e| fail(name, "lock", e))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| fail(name, "lock", e))?;
    if base.is_dir() {
        return Ok(base);
    }
    let tmp = dir.join(format!(".base-{digest}.{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir(&tmp).map_err(|e| fail(name, "create", e))?;
    super::copy_tree(seed, &tmp).map_err(|e| fail(name, "copy the seed", e))?;
    if let Ok(md) = fs::metadata(seed) {
        use std::os::unix::fs::PermissionsExt;
        let _ = fs::set_permissions(&tmp, fs::Permissions::from_mode(md.mode() & 0o7777));
    }
    fs::rename(&tmp, &base).map_err(|e| fail(name, "create the baseline", e))?;
    let st = serde_json::json!({"name": name, "project": project, "kind": "shared", "seed": seed, "digest": digest});
    let _ = fs::write(
        dir.join("disk.json"),
        serde_json::to_vec_pretty(&st).unwrap_or_default(),
    );
    Ok(base)
}

/// Bytes the baselines of shared disks take on the host, by disk name.
pub fn list(root: &Path) -> Vec<(String, String, u64)> {
    let mut out = Vec::new();
    for e in fs::read_dir(super::private::disks_dir(root))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(t) = fs::read_to_string(e.path().join("disk.json")) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) else {
            continue;
        };
        if v["kind"] != "shared" {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        out.push((
            name,
            v["project"].as_str().unwrap_or("").to_string(),
            super::tree_usage(&e.path()),
        ));
    }
    out.sort();
    out
}
