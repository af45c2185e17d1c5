//! Reading a project archive (module doc of `portable`) into a state root and a project
//! directory. Every member is staged under `<root>/tmp/import-<pid>/` as it is read, hashed on
//! the way; nothing is committed until the manifest, the last member, has vouched for all of
//! it. Trees are written through directory descriptors, one component at a time with
//! O_NOFOLLOW, so a symlink in the archive can never send a later entry (or a hard link's
//! target) out of the staging directory (the tar-slip family of bugs, CVE-2018-1002200 in
//! other tools).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use sha2::{Digest as _, Sha256};

use super::{
    EntryKind, EntryMeta, FORMAT, HEADER, Header, Item, MANIFEST, Manifest, PROJECT, PortableError,
    SPARSE_MAGIC, Sum, TreeSum, VERSION, hash_entry, io_err,
};
use crate::image::{Digest, ImageStore, Member};

/// Where and as what to import.
pub struct ImportOptions {
    /// The state root to import into.
    pub root: PathBuf,
    /// The project name [default: the exported one].
    pub name: Option<String>,
    /// The project directory to create [default: `./<name>`].
    pub dir: Option<PathBuf>,
    /// The working directory (for the default `dir`).
    pub cwd: PathBuf,
}

/// What an import made.
#[derive(Debug, Clone, Default)]
pub struct Imported {
    pub name: String,
    pub dir: PathBuf,
    pub images: Vec<String>,
    pub volumes: Vec<String>,
    pub disks: Vec<String>,
    pub files: u64,
    pub bytes: u64,
}

/// The staging directory, removed unless the import commits.
struct Staging {
    path: PathBuf,
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Removes staging directories of imports that were killed (their pid is gone).
fn clean_stale(tmp: &Path) {
    let Ok(rd) = fs::read_dir(tmp) else { return };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = n
            .strip_prefix("import-")
            .and_then(|p| p.parse::<i32>().ok())
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fn damaged(what: impl Into<String>) -> PortableError {
    PortableError::Damaged(what.into())
}

/// The archive ended inside `member` (the tar reader returns a short member at the end of
/// its input rather than an error).
fn truncated(member: &str) -> PortableError {
    damaged(format!("it ends inside `{member}`: it is truncated"))
}

/// A read error of a member: an early end is a truncated archive.
fn read_err(member: &str) -> impl FnOnce(io::Error) -> PortableError + '_ {
    move |e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            truncated(member)
        } else {
            PortableError::Read(e)
        }
    }
}

pub fn import(input: impl Read, opts: &ImportOptions) -> Result<Imported, PortableError> {
    let tmp = opts.root.join("tmp");
    fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
    clean_stale(&tmp);
    let staging = Staging {
        path: tmp.join(format!("import-{}", std::process::id())),
    };
    let _ = fs::remove_dir_all(&staging.path);
    fs::create_dir(&staging.path).map_err(io_err("create", &staging.path))?;
    let images_dir = staging.path.join("images");
    let volumes_dir = staging.path.join("volumes");
    let disks_dir = staging.path.join("disks");
    let project_dir = staging.path.join(PROJECT);
    for d in [&images_dir, &volumes_dir, &disks_dir, &project_dir] {
        fs::create_dir(d).map_err(io_err("create", d))?;
    }

    let mut archive = tar::Archive::new(input);
    let mut entries = archive.entries().map_err(PortableError::Read)?;
    // The header first: what this is, before reading megabytes of it.
    let mut seen: BTreeMap<String, Sum> = BTreeMap::new();
    let header: Header = {
        let Some(first) = entries.next() else {
            return Err(PortableError::NotExport("the archive is empty".into()));
        };
        let mut first = first.map_err(PortableError::Read)?;
        let name = String::from_utf8_lossy(&first.path_bytes()).into_owned();
        if name != HEADER {
            // docker-save writes `<64 hex>.json` or `<64 hex>/layer.tar` first, an OCI layout
            // `oci-layout`, `index.json` or `blobs/...`.
            let hex = name.split(['.', '/']).next().unwrap_or("");
            let image_like = matches!(
                name.as_str(),
                "manifest.json" | "oci-layout" | "index.json" | "repositories"
            ) || name.starts_with("blobs/")
                || (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
            let hint = if image_like {
                " (it is an image archive: `berth image import` takes it)"
            } else {
                ""
            };
            return Err(PortableError::NotExport(format!(
                "its first member is `{name}`, not `{HEADER}`{hint}"
            )));
        }
        let mut bytes = Vec::new();
        (&mut first)
            .take(1 << 20)
            .read_to_end(&mut bytes)
            .map_err(PortableError::Read)?;
        if (bytes.len() as u64) < first.size() {
            return Err(truncated(HEADER));
        }
        let h: Header = serde_json::from_slice(&bytes)
            .map_err(|e| PortableError::NotExport(format!("{HEADER}: {e}")))?;
        if h.format != FORMAT || h.version != VERSION {
            return Err(PortableError::NotExport(format!(
                "{HEADER} says format `{}` version {}; this berth reads `{FORMAT}` version {VERSION}",
                h.format, h.version
            )));
        }
        seen.insert(
            HEADER.to_string(),
            Sum {
                size: bytes.len() as u64,
                sha256: Digest::of(&bytes),
            },
        );
        h
    };
    let name = opts.name.clone().unwrap_or_else(|| header.project.clone());
    if !crate::spec::valid_project_name(&name) {
        return Err(PortableError::Refused(format!(
            "`{name}` is not a project name (lowercase letters, digits, `-` and `_`)"
        )));
    }
    for f in &header.files {
        safe_rel(f).ok_or_else(|| damaged(format!("{HEADER} names the file `{f}`")))?;
    }
    let dest = match &opts.dir {
        Some(d) if d.is_absolute() => d.clone(),
        Some(d) => opts.cwd.join(d),
        None => opts.cwd.join(&name),
    };
    // Refused before anything is read: an import never writes over a directory that has
    // something in it.
    if dest.exists() && !dest.is_dir() {
        return Err(PortableError::Refused(format!(
            "{} exists and is not a directory",
            dest.display()
        )));
    }
    if let Ok(mut rd) = fs::read_dir(&dest)
        && rd.next().is_some()
    {
        return Err(PortableError::Refused(format!(
            "{} exists and is not empty; import into a new directory (--project-directory DIR)",
            dest.display()
        )));
    }
    if crate::state::projects(&opts.root)
        .iter()
        .any(|p| p.name == name)
    {
        return Err(PortableError::Refused(format!(
            "a project named `{name}` already exists in {}; import under another name with -p NAME",
            opts.root.display()
        )));
    }

    // The names the project gives its volumes, disks and images under its new name, and none
    // of them taken here: refused before the data is read.
    let mut names: HashMap<Item, String> = HashMap::new();
    for (item, old) in header
        .volumes
        .iter()
        .map(|v| (&v.item, &v.name))
        .chain(header.disks.iter().map(|d| (&d.item, &d.name)))
    {
        let host = super::renamed(item, old, &header.project, &name);
        if host.is_empty() || host.contains('/') || host.starts_with('.') {
            return Err(damaged(format!("{HEADER} names {item} `{host}`")));
        }
        let (path, what) = match item {
            Item::Disk { .. } => (
                crate::disk::private::disks_dir(&opts.root).join(&host),
                "a disk",
            ),
            _ => (crate::disk::volumes_dir(&opts.root).join(&host), "a volume"),
        };
        if path.exists() {
            return Err(PortableError::Refused(format!(
                "{item} of project {name} would be {what} named `{host}`, which exists in {}; \
                 import under another name (-p NAME) or remove it (`berth disk rm {host}`)",
                opts.root.display()
            )));
        }
        names.insert(item.clone(), host);
    }
    let mut trees: BTreeMap<String, TreeSink> = BTreeMap::new();
    let mut image_members: HashMap<String, Member> = HashMap::new();
    let mut disk_files: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut manifest: Option<Manifest> = None;
    let mut n = 0u64;
    for entry in entries {
        let mut entry = entry.map_err(PortableError::Read)?;
        n += 1;
        let member = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if manifest.is_some() {
            return Err(damaged(format!("`{member}` follows the manifest")));
        }
        if member == MANIFEST {
            let mut bytes = Vec::new();
            (&mut entry)
                .take(256 << 20)
                .read_to_end(&mut bytes)
                .map_err(PortableError::Read)?;
            if (bytes.len() as u64) < entry.size() {
                return Err(truncated(MANIFEST));
            }
            manifest = Some(
                serde_json::from_slice(&bytes).map_err(|e| damaged(format!("{MANIFEST}: {e}")))?,
            );
            continue;
        }
        let (section, rest) =
            section_of(&member).ok_or_else(|| damaged(format!("unexpected member `{member}`")))?;
        match section.as_str() {
            "images" => {
                let rel = safe_rel(&rest)
                    .ok_or_else(|| damaged(format!("unsafe member name `{member}`")))?;
                let file = images_dir.join(format!("m{n}"));
                let want = entry.size();
                let sum = stage_file(&mut entry, &file)?;
                if sum.size < want {
                    return Err(truncated(&member));
                }
                seen.insert(member.clone(), sum.clone());
                image_members.insert(
                    rel,
                    Member {
                        file,
                        digest: sum.sha256,
                        size: sum.size,
                    },
                );
            }
            "disks" => {
                let Some(num) = rest
                    .strip_suffix(".img")
                    .filter(|s| s.parse::<u32>().is_ok())
                else {
                    return Err(damaged(format!("unexpected member `{member}`")));
                };
                let file = disks_dir.join(format!("{num}.img"));
                let sum = stage_disk(&mut entry, &file, &member)?;
                seen.insert(member.clone(), sum);
                disk_files.insert(member.clone(), file);
            }
            _ => {
                // A tree: `project/...` or `volumes/<n>/...`.
                let (key, rel, base) = if section == PROJECT {
                    (PROJECT.to_string(), rest.clone(), project_dir.clone())
                } else {
                    let (num, rel) = rest.split_once('/').unwrap_or((rest.as_str(), ""));
                    if num.parse::<u32>().is_err() {
                        return Err(damaged(format!("unexpected member `{member}`")));
                    }
                    let base = volumes_dir.join(num);
                    if !base.exists() {
                        fs::create_dir(&base).map_err(io_err("create", &base))?;
                    }
                    (format!("volumes/{num}"), rel.to_string(), base)
                };
                let sink = match trees.entry(key) {
                    std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(TreeSink::new(&base)?)
                    }
                };
                sink.add(&rel, &member, &mut entry)?;
            }
        }
    }
    let Some(manifest) = manifest else {
        return Err(PortableError::Damaged(
            "it ends before its manifest (`berth-manifest.json`, the last member): it is truncated"
                .into(),
        ));
    };
    // Every member the manifest lists is here, with its size and checksum, and nothing else.
    for (m, want) in &manifest.members {
        match seen.get(m) {
            None => return Err(damaged(format!("`{m}` is missing"))),
            Some(got) if got.size != want.size => {
                return Err(damaged(format!(
                    "`{m}` is {} bytes, the manifest says {}",
                    got.size, want.size
                )));
            }
            Some(got) if got.sha256 != want.sha256 => {
                return Err(damaged(format!(
                    "`{m}` does not match its checksum (manifest {}, content {})",
                    want.sha256, got.sha256
                )));
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = seen.keys().find(|k| !manifest.members.contains_key(*k)) {
        return Err(damaged(format!("`{extra}` is not in the manifest")));
    }
    let mut sums: BTreeMap<String, TreeSum> = BTreeMap::new();
    for (k, sink) in trees {
        sums.insert(k, sink.finish()?);
    }
    for (k, want) in &manifest.trees {
        let got = sums.remove(k);
        match got {
            None if want.entries == 0 => {}
            None => return Err(damaged(format!("the tree `{k}/` is missing"))),
            Some(got) if &got != want => {
                return Err(damaged(format!(
                    "the tree `{k}/` does not match its checksum ({} entries, {} bytes; the manifest says {} entries, {} bytes)",
                    got.entries, got.bytes, want.entries, want.bytes
                )));
            }
            Some(_) => {}
        }
    }
    if let Some(k) = sums.keys().next() {
        return Err(damaged(format!("the tree `{k}/` is not in the manifest")));
    }
    // What the header promised is all here.
    for f in &header.files {
        if !fs::symlink_metadata(project_dir.join(f)).is_ok_and(|m| m.is_file()) {
            return Err(damaged(format!("the project file `{f}` is missing")));
        }
    }
    for d in &header.disks {
        let m = format!("disks/{}.img", d.n);
        if !disk_files.contains_key(&m) {
            return Err(damaged(format!("{} (`{m}`) is missing", d.item)));
        }
    }
    for v in &header.volumes {
        if !manifest.trees.contains_key(&format!("volumes/{}", v.n)) {
            return Err(damaged(format!(
                "{} (`volumes/{}/`) is missing",
                v.item, v.n
            )));
        }
    }

    // Everything is verified: commit. Images first (the store's own import checks every
    // digest again and adds nothing unless all of it holds), then the data, then the
    // project directory, so a project directory is there only when its data is.
    let mut out = Imported {
        name: name.clone(),
        dir: dest.clone(),
        ..Imported::default()
    };
    let store = ImageStore::open(&opts.root)?;
    if !image_members.is_empty() {
        let infos = store.import_layout(Path::new("the archive's images/"), image_members)?;
        for i in infos {
            out.images.push(match (&i.repository, &i.tag) {
                (Some(r), Some(t)) => format!("{r}:{t}"),
                _ => i.id.clone(),
            });
        }
        // A service whose image the new project names otherwise (a built image is named
        // after its project) gets that name too.
        for u in &header.images {
            let new = super::renamed_image(&u.service, &u.reference, &header.project, &name);
            if new != u.reference {
                store.tag(&u.id, &new)?;
                out.images.push(new);
            }
        }
    }
    let mut made: Vec<PathBuf> = Vec::new();
    let result = (|| -> Result<(), PortableError> {
        for v in &header.volumes {
            let Some(host) = names.get(&v.item) else {
                continue;
            };
            let src = volumes_dir.join(v.n.to_string());
            let dir = crate::disk::volumes_dir(&opts.root).join(host);
            fs::create_dir_all(crate::disk::volumes_dir(&opts.root))
                .map_err(io_err("create", &dir))?;
            fs::create_dir(&dir).map_err(io_err("create the volume", &dir))?;
            made.push(dir.clone());
            let data = dir.join("_data");
            if src.is_dir() {
                fs::rename(&src, &data).map_err(io_err("move the volume in", &data))?;
            } else {
                fs::create_dir(&data).map_err(io_err("create", &data))?;
            }
            crate::disk::record_volume(
                &dir,
                host,
                &name,
                matches!(v.item, Item::Anonymous { .. }),
                &v.labels,
            )?;
            out.volumes.push(host.to_string());
        }
        for d in &header.disks {
            let Some(host) = names.get(&d.item) else {
                continue;
            };
            let member = format!("disks/{}.img", d.n);
            let src = disk_files
                .get(&member)
                .ok_or_else(|| damaged(format!("`{member}` is missing")))?;
            let dir = crate::disk::private::disks_dir(&opts.root).join(host);
            fs::create_dir_all(crate::disk::private::disks_dir(&opts.root))
                .map_err(io_err("create", &dir))?;
            fs::create_dir(&dir).map_err(io_err("create the disk", &dir))?;
            made.push(dir.clone());
            crate::disk::private::adopt(&opts.root, host, &name, src, &d.labels)?;
            out.disks.push(host.to_string());
        }
        // The project directory: copied, since it may be on another file system than the
        // state root.
        let created = !dest.exists();
        fs::create_dir_all(&dest).map_err(io_err("create the project directory", &dest))?;
        if created {
            made.push(dest.clone());
        }
        crate::disk::copy_tree_with(&project_dir, &dest, true)
            .map_err(io_err("write the project directory", &dest))?;
        set_project_name(&dest, &name, &header)?;
        Ok(())
    })();
    if let Err(e) = result {
        for p in made.iter().rev() {
            let _ = fs::remove_dir_all(p);
        }
        return Err(e);
    }
    out.files = manifest.trees.get(PROJECT).map_or(0, |t| t.entries);
    out.bytes = manifest.members.values().map(|s| s.size).sum::<u64>()
        + manifest.trees.values().map(|t| t.bytes).sum::<u64>();
    Ok(out)
}

/// `images/x` -> ("images", "x"); `project/a/b` -> ("project", "a/b"); `project/` -> ("project", "").
fn section_of(member: &str) -> Option<(String, String)> {
    let (s, rest) = member.split_once('/')?;
    match s {
        PROJECT | "images" | "volumes" | "disks" => {
            Some((s.to_string(), rest.trim_end_matches('/').to_string()))
        }
        _ => None,
    }
}

/// `rel` if it is a relative path of plain components (no `..`, `.`, empty or absolute).
fn safe_rel(rel: &str) -> Option<String> {
    if rel.is_empty() {
        return Some(String::new());
    }
    if rel.starts_with('/') || rel.contains('\0') {
        return None;
    }
    rel.split('/')
        .all(|c| !c.is_empty() && c != "." && c != "..")
        .then(|| rel.to_string())
}

/// Copies a member to `file`, returning its size and sha256.
fn stage_file(r: &mut impl Read, file: &Path) -> Result<Sum, PortableError> {
    let f = File::create_new(file).map_err(io_err("create", file))?;
    let mut w = crate::image::HashWriter::new(io::BufWriter::with_capacity(1 << 20, f));
    io::copy(r, &mut w).map_err(PortableError::Read)?;
    let (w, sha256, size) = w.finish();
    w.into_inner()
        .map_err(|e| e.into_error())
        .map_err(io_err("write", file))?;
    Ok(Sum { size, sha256 })
}

/// Writes a disk member (sparse format) as the image `file`, its holes left unwritten.
fn stage_disk(r: &mut impl Read, file: &Path, member: &str) -> Result<Sum, PortableError> {
    use std::os::unix::fs::FileExt;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut read_exact = |r: &mut dyn Read, buf: &mut [u8]| -> Result<(), PortableError> {
        r.read_exact(buf).map_err(read_err(member))?;
        hasher.update(&*buf);
        size += buf.len() as u64;
        Ok(())
    };
    let mut head = [0u8; 28];
    read_exact(r, &mut head)?;
    if &head[..12] != SPARSE_MAGIC {
        return Err(damaged(format!("`{member}` is not a berth disk image")));
    }
    let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    let len = word(&head[12..20]);
    let count = word(&head[20..28]);
    if count > (1 << 24) {
        return Err(damaged(format!("`{member}` claims {count} extents")));
    }
    let mut extents = Vec::with_capacity(count as usize);
    let mut end = 0u64;
    for _ in 0..count {
        let mut e = [0u8; 16];
        read_exact(r, &mut e)?;
        let (off, l) = (word(&e[..8]), word(&e[8..]));
        if off < end || off.checked_add(l).is_none_or(|x| x > len) {
            return Err(damaged(format!(
                "`{member}` has an extent out of order or bounds"
            )));
        }
        end = off + l;
        extents.push((off, l));
    }
    let f = File::create_new(file).map_err(io_err("create", file))?;
    f.set_len(len).map_err(io_err("size", file))?;
    let mut buf = vec![0u8; 1 << 20];
    for (off, l) in extents {
        let mut at = off;
        let mut left = l;
        while left > 0 {
            let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            read_exact(r, &mut buf[..n])?;
            f.write_all_at(&buf[..n], at)
                .map_err(io_err("write", file))?;
            at += n as u64;
            left -= n as u64;
        }
    }
    // Anything after the last extent is not part of the format.
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).map_err(PortableError::Read)?;
    if !rest.is_empty() {
        return Err(damaged(format!(
            "`{member}` has {} bytes after its data",
            rest.len()
        )));
    }
    Ok(Sum {
        size,
        sha256: Digest::from_hasher(hasher),
    })
}

/// A tree being staged: entries written under `root` through descriptors.
struct TreeSink {
    root: OwnedFd,
    hasher: Sha256,
    sum: TreeSum,
    /// Directories' metadata, applied at the end (a read-only directory would refuse its
    /// entries).
    dirs: Vec<(String, u32, u64, u64, u64)>,
}

impl TreeSink {
    fn new(base: &Path) -> Result<TreeSink, PortableError> {
        let root = rustix::fs::open(
            base,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| PortableError::Io {
            step: "open",
            path: base.to_path_buf(),
            source: e.into(),
        })?;
        Ok(TreeSink {
            root,
            hasher: Sha256::new(),
            sum: TreeSum {
                entries: 0,
                bytes: 0,
                sha256: Digest::of(b""),
            },
            dirs: Vec::new(),
        })
    }

    /// The directory `rel` under the root, made (0700 until its own entry's mode is applied)
    /// where missing; a component that is not a directory (a symlink) is refused.
    fn dir(&self, rel: &str) -> io::Result<OwnedFd> {
        let mut cur = rustix::io::dup(&self.root)?;
        for c in rel.split('/').filter(|c| !c.is_empty()) {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            cur = match rustix::fs::openat(&cur, c, flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) => {
                    rustix::fs::mkdirat(&cur, c, Mode::from_raw_mode(0o700))?;
                    rustix::fs::openat(&cur, c, flags, Mode::empty())?
                }
                Err(e) => return Err(e.into()),
            };
        }
        Ok(cur)
    }

    fn add<R: Read>(
        &mut self,
        rel: &str,
        member: &str,
        entry: &mut tar::Entry<R>,
    ) -> Result<(), PortableError> {
        let bad = |what: &str| damaged(format!("`{member}`: {what}"));
        let rel = safe_rel(rel).ok_or_else(|| bad("an unsafe path"))?;
        let h = entry.header();
        let mode = h.mode().map_err(|_| bad("a bad mode"))?;
        let uid = h.uid().map_err(|_| bad("a bad owner"))?;
        let gid = h.gid().map_err(|_| bad("a bad group"))?;
        let mtime = h.mtime().map_err(|_| bad("a bad time"))?;
        let size = h.size().map_err(|_| bad("a bad size"))?;
        let kind = match h.entry_type() {
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
            tar::EntryType::Symlink => EntryKind::Symlink,
            tar::EntryType::Link => EntryKind::Hardlink,
            _ => return Err(bad("an entry of a kind berth does not write")),
        };
        let link = match kind {
            EntryKind::Symlink | EntryKind::Hardlink => entry
                .link_name_bytes()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .ok_or_else(|| bad("a link without a target"))?,
            _ => String::new(),
        };
        // A hard link names its target by member name; the digest covers the path inside
        // the tree, as the exporter hashed it.
        let link_rel = if kind == EntryKind::Hardlink {
            let (_, r) = section_of(&link).ok_or_else(|| bad("a hard link out of its tree"))?;
            let r = match member.split_once('/') {
                Some(("volumes", _)) => r
                    .split_once('/')
                    .map(|(_, x)| x.to_string())
                    .unwrap_or_default(),
                _ => r,
            };
            safe_rel(&r)
                .filter(|r| !r.is_empty())
                .ok_or_else(|| bad("a hard link to an unsafe path"))?
        } else {
            link.clone()
        };
        let content = if kind == EntryKind::File { size } else { 0 };
        hash_entry(
            &mut self.hasher,
            &EntryMeta {
                rel: &rel,
                kind,
                mode,
                uid,
                gid,
                mtime,
                size: content,
                link: &link_rel,
            },
        );
        self.sum.entries += 1;
        let io = |step: &'static str| {
            let path = PathBuf::from(member);
            move |e: io::Error| PortableError::Io {
                step,
                path,
                source: e,
            }
        };
        let rx = |step: &'static str| {
            let path = PathBuf::from(member);
            move |e: rustix::io::Errno| PortableError::Io {
                step,
                path,
                source: e.into(),
            }
        };
        if kind == EntryKind::Dir {
            if !rel.is_empty() {
                let (parent, base) = split(&rel);
                let p = self.dir(parent).map_err(io("create"))?;
                match rustix::fs::mkdirat(&p, base, Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(rx("create")(e)),
                }
            }
            self.dirs.push((rel, mode, uid, gid, mtime));
            return Ok(());
        }
        let (parent, base) = split(&rel);
        if base.is_empty() {
            return Err(bad("a file at the tree's root"));
        }
        let p = self.dir(parent).map_err(io("create"))?;
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: mtime as i64,
                tv_nsec: 0,
            },
            last_modification: Timespec {
                tv_sec: mtime as i64,
                tv_nsec: 0,
            },
        };
        match kind {
            EntryKind::File => {
                let mut f = crate::support::create_new_at(&p, base).map_err(rx("create"))?;
                let mut buf = vec![0u8; 256 << 10];
                let mut left = size;
                while left > 0 {
                    let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    entry.read_exact(&mut buf[..n]).map_err(read_err(member))?;
                    self.hasher.update(&buf[..n]);
                    f.write_all(&buf[..n]).map_err(io("write"))?;
                    left -= n as u64;
                }
                self.sum.bytes += size;
                // Owner before mode: a chown clears set-id bits.
                rustix::fs::fchown(&f, Some(uid_of(uid)), Some(gid_of(gid)))
                    .map_err(rx("chown"))?;
                rustix::fs::fchmod(&f, Mode::from_raw_mode(mode & 0o7777)).map_err(rx("chmod"))?;
                rustix::fs::futimens(&f, &times).map_err(rx("set times"))?;
            }
            EntryKind::Symlink => {
                rustix::fs::symlinkat(link.as_str(), &p, base).map_err(rx("create the link"))?;
                rustix::fs::chownat(
                    &p,
                    base,
                    Some(uid_of(uid)),
                    Some(gid_of(gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(rx("chown"))?;
                rustix::fs::utimensat(&p, base, &times, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(rx("set times"))?;
            }
            EntryKind::Hardlink => {
                let (tparent, tbase) = split(&link_rel);
                let tp = self.dir(tparent).map_err(io("find the link's target"))?;
                rustix::fs::linkat(&tp, tbase, &p, base, AtFlags::empty()).map_err(rx("link"))?;
            }
            EntryKind::Dir => {}
        }
        Ok(())
    }

    /// Applies the directories' metadata, deepest first; returns the tree's digest.
    fn finish(mut self) -> Result<TreeSum, PortableError> {
        self.dirs.sort_by(|a, b| b.0.cmp(&a.0));
        for (rel, mode, uid, gid, mtime) in &self.dirs {
            let fd = self.dir(rel).map_err(io_err("open", rel))?;
            let e = |step| {
                let rel = rel.clone();
                move |e: rustix::io::Errno| PortableError::Io {
                    step,
                    path: PathBuf::from(rel),
                    source: e.into(),
                }
            };
            rustix::fs::fchown(&fd, Some(uid_of(*uid)), Some(gid_of(*gid))).map_err(e("chown"))?;
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode & 0o7777)).map_err(e("chmod"))?;
            let t = Timespec {
                tv_sec: *mtime as i64,
                tv_nsec: 0,
            };
            rustix::fs::futimens(
                &fd,
                &Timestamps {
                    last_access: t,
                    last_modification: t,
                },
            )
            .map_err(e("set times"))?;
        }
        self.sum.sha256 = Digest::from_hasher(self.hasher);
        Ok(self.sum)
    }
}

fn split(rel: &str) -> (&str, &str) {
    rel.rsplit_once('/').unwrap_or(("", rel))
}

fn uid_of(u: u64) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(u32::try_from(u).unwrap_or(u32::MAX - 1))
}

fn gid_of(g: u64) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(u32::try_from(g).unwrap_or(u32::MAX - 1))
}

/// Makes the imported project come up under `name`: `COMPOSE_PROJECT_NAME` in its `.env`
/// (it wins over the file's `name:` and the directory's name, as in Compose), unless the
/// name is the one it had and the directory is named after it.
fn set_project_name(dest: &Path, name: &str, header: &Header) -> Result<(), PortableError> {
    let dir_name = dest.file_name().map(|n| n.to_string_lossy().into_owned());
    if name == header.project && dir_name.as_deref() == Some(name) {
        return Ok(());
    }
    let env = dest.join(".env");
    // The archive's `.env` may be a symlink: it is never read or written through one that
    // leaves the project directory (a crafted archive would have berth, as root, write to a
    // host file); one inside it is replaced by a file with the same content.
    let old = match fs::symlink_metadata(&env) {
        Ok(m) if m.file_type().is_symlink() => {
            let inside = fs::canonicalize(&env)
                .ok()
                .zip(fs::canonicalize(dest).ok())
                .is_some_and(|(t, d)| t.starts_with(d) && t.is_file());
            if !inside {
                return Err(PortableError::Refused(format!(
                    "{}: the archive's .env is a symlink out of the project; not following it",
                    env.display()
                )));
            }
            let text = fs::read_to_string(&env).unwrap_or_default();
            fs::remove_file(&env).map_err(io_err("replace", &env))?;
            text
        }
        Ok(m) if !m.is_file() => {
            return Err(PortableError::Refused(format!(
                "{}: the archive's .env is not a file",
                env.display()
            )));
        }
        _ => fs::read_to_string(&env).unwrap_or_default(),
    };
    let mut lines: Vec<String> = old
        .lines()
        .filter(|l| !l.trim_start().starts_with("COMPOSE_PROJECT_NAME="))
        .map(str::to_string)
        .collect();
    lines.push(format!("COMPOSE_PROJECT_NAME={name}"));
    // A new file renamed over it: nothing is written through whatever is there.
    let tmp = dest.join(format!(".env.berth-{}", std::process::id()));
    File::create_new(&tmp)
        .and_then(|mut f| f.write_all((lines.join("\n") + "\n").as_bytes()))
        .map_err(io_err("write", &tmp))?;
    fs::rename(&tmp, &env).map_err(io_err("write", &env))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar of `entries` (name, kind, link or content), owned by the caller's uid.
    fn tar_of(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, x) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o755);
            h.set_uid(u64::from(rustix::process::getuid().as_raw()));
            h.set_gid(u64::from(rustix::process::getgid().as_raw()));
            // Raw name fields: the tar crate (rightly) refuses to write `..`.
            let raw = |field: &mut [u8], v: &str| {
                field.fill(0);
                field[..v.len()].copy_from_slice(v.as_bytes());
            };
            raw(&mut h.as_old_mut().name, name);
            let link = matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link);
            if link {
                raw(&mut h.as_old_mut().linkname, x);
            }
            h.set_size(if link { 0 } else { x.len() as u64 });
            h.set_cksum();
            let data: &[u8] = if link { b"" } else { x.as_bytes() };
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn feed(dir: &Path, bytes: &[u8]) -> Result<TreeSum, PortableError> {
        let mut sink = TreeSink::new(dir)?;
        let mut a = tar::Archive::new(bytes);
        for e in a.entries().map_err(PortableError::Read)? {
            let mut e = e.map_err(PortableError::Read)?;
            let member = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let (_, rest) = section_of(&member).unwrap();
            let rel = rest.split_once('/').map_or("", |(_, r)| r).to_string();
            sink.add(&rel, &member, &mut e)?;
        }
        sink.finish()
    }

    #[test]
    fn a_symlink_in_a_tree_never_leads_an_entry_out_of_it() {
        let t = tempfile::tempdir().unwrap();
        let stage = t.path().join("stage");
        let outside = t.path().join("outside");
        fs::create_dir_all(&stage).unwrap();
        fs::create_dir_all(&outside).unwrap();
        let out = outside.to_str().unwrap();
        use tar::EntryType as E;
        // A file through a symlinked directory.
        let r = feed(
            &stage,
            &tar_of(&[
                ("volumes/0/evil", E::Symlink, out),
                ("volumes/0/evil/pwned", E::Regular, "x"),
            ]),
        );
        assert!(r.is_err());
        assert!(!outside.join("pwned").exists());
        // A hard link to a file through a symlink, or above the tree.
        let victim = outside.join("victim");
        fs::write(&victim, "v").unwrap();
        let stage2 = t.path().join("stage2");
        fs::create_dir_all(&stage2).unwrap();
        let r = feed(
            &stage2,
            &tar_of(&[
                ("volumes/0/evil", E::Symlink, out),
                ("volumes/0/h", E::Link, "volumes/0/evil/victim"),
            ]),
        );
        assert!(r.is_err());
        let r = feed(
            &stage2,
            &tar_of(&[("volumes/0/h2", E::Link, "volumes/0/../../outside/victim")]),
        );
        assert!(r.is_err());
        use std::os::unix::fs::MetadataExt;
        assert_eq!(fs::metadata(&victim).unwrap().nlink(), 1);
        // An entry that climbs out.
        let r = feed(&stage2, &tar_of(&[("volumes/0/../x", E::Regular, "x")]));
        assert!(r.is_err());
        assert!(!t.path().join("x").exists());
    }

    #[test]
    fn the_project_name_is_never_written_through_a_symlinked_env() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        fs::write(&victim, "untouched\n").unwrap();
        let dest = t.path().join("proj");
        fs::create_dir_all(&dest).unwrap();
        std::os::unix::fs::symlink(&victim, dest.join(".env")).unwrap();
        let header = Header {
            format: FORMAT.into(),
            version: VERSION,
            project: "old".into(),
            files: Vec::new(),
            created: 0,
            berth: String::new(),
            images: Vec::new(),
            volumes: Vec::new(),
            disks: Vec::new(),
        };
        assert!(set_project_name(&dest, "new", &header).is_err());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "untouched\n");
        // A link inside the project is replaced by a file with its content and the name.
        fs::remove_file(dest.join(".env")).unwrap();
        fs::write(dest.join("dev.env"), "A=1\n").unwrap();
        std::os::unix::fs::symlink("dev.env", dest.join(".env")).unwrap();
        set_project_name(&dest, "new", &header).unwrap();
        let env = fs::read_to_string(dest.join(".env")).unwrap();
        assert_eq!(env, "A=1\nCOMPOSE_PROJECT_NAME=new\n");
        assert_eq!(fs::read_to_string(dest.join("dev.env")).unwrap(), "A=1\n");
    }

    #[test]
    fn a_tree_digest_covers_names_modes_links_and_content() {
        use tar::EntryType as E;
        let t = tempfile::tempdir().unwrap();
        let one = |content: &str, link: &str| {
            let d = t.path().join(format!("s{}", rand_suffix()));
            fs::create_dir_all(&d).unwrap();
            feed(
                &d,
                &tar_of(&[
                    ("volumes/0/", E::Directory, ""),
                    ("volumes/0/a", E::Regular, content),
                    ("volumes/0/l", E::Symlink, link),
                    ("volumes/0/h", E::Link, "volumes/0/a"),
                ]),
            )
            .unwrap()
        };
        let base = one("abc", "a");
        assert_eq!(base, one("abc", "a"));
        assert_ne!(base, one("abd", "a"));
        assert_ne!(base, one("abc", "b"));
        assert_eq!(base.entries, 4);
        assert_eq!(base.bytes, 3);
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    #[test]
    fn member_paths_are_checked() {
        assert_eq!(safe_rel("a/b").as_deref(), Some("a/b"));
        assert!(safe_rel("../x").is_none());
        assert!(safe_rel("a/../x").is_none());
        assert!(safe_rel("/etc").is_none());
        assert!(safe_rel("a//b").is_none());
        assert_eq!(
            section_of("project/").unwrap(),
            ("project".into(), "".into())
        );
        assert_eq!(
            section_of("volumes/0/a").unwrap(),
            ("volumes".into(), "0/a".into())
        );
        assert!(section_of("etc/passwd").is_none());
    }
}
