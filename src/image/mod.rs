//! berth's content-addressed image store.
//!
//! ```text
//! <root>/images/
//!   lock                         flock(2)ed while the store is changed
//!   repositories.json            tags -> image ids, and each image's manifest, config, layers
//!   blobs/sha256/<hex>           blobs as received: manifests, configs, layer tars (gzip or not)
//!   layers/sha256/<diffid-hex>/  each layer unpacked once, read-only, an overlayfs lower dir
//!   tmp/                         one directory per import in progress; emptied by the next one
//! ```
//!
//! An import stages everything in `tmp/`, verifies every digest and DiffID, unpacks the new
//! layers there, and only then moves blobs and layer directories into place (each one rename)
//! and last rewrites `repositories.json` (temp file, fsync, rename). A failed or interrupted
//! import therefore never leaves an image half there: at worst unreferenced blobs or layers,
//! which the next garbage collection removes. Readers (`list`, `resolve`) take no lock: they
//! see one version of `repositories.json` or the next.

mod archive;
mod commit;
mod config;
mod digest;
mod error;
pub mod host;
mod reference;
pub mod registry;
mod save;
#[doc(hidden)]
pub mod testutil;
mod unpack;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use archive::Member;
pub use config::{Healthcheck, ImageConfig};
pub use digest::{Digest, HashWriter, digest_of_path};
pub use error::ImageError;
pub use save::{Saved, SavedMember};

use archive::{Compression, Staged};
use config::{Descriptor, DockerSaveEntry, Index, Manifest, RawImage};
use digest::HashReader;

/// One line of `berth image ls`: one per tag, or one with no tag for an untagged image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageInfo {
    /// `busybox`, `localhost:5000/app`; `None` for an untagged image.
    pub repository: Option<String>,
    pub tag: Option<String>,
    /// The config digest, `sha256:<hex>`, as docker reports image ids.
    pub id: String,
    /// Sum of the layers' uncompressed sizes, in bytes.
    pub size: u64,
    /// The config's `created` timestamp (RFC 3339), when it has one.
    pub created: Option<String>,
}

/// A resolved image: what the runtime needs to build a container's root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub id: String,
    /// The unpacked layer directories, bottom layer first (overlayfs' `lowerdir=` wants them
    /// top first: reverse this).
    pub layers: Vec<PathBuf>,
    pub config: ImageConfig,
}

/// What `remove` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    pub untagged: Vec<String>,
    /// The image id, when the image itself was deleted (its last tag removed, or removed by id).
    pub deleted: Option<String>,
    /// The untagged images `prune` deleted.
    pub pruned: Vec<String>,
    pub blobs_freed: usize,
    pub layers_freed: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Repositories {
    version: u32,
    /// Tag as stored (`busybox:latest`) -> image id.
    tags: BTreeMap<String, Digest>,
    /// Image id (config digest) -> what the image is made of.
    images: BTreeMap<Digest, ImageRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImageRecord {
    manifest: Digest,
    config: Digest,
    layers: Vec<LayerRecord>,
    #[serde(default)]
    created: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LayerRecord {
    diff_id: Digest,
    /// The layer's blob as received (compressed or not).
    blob: Digest,
    /// Uncompressed size in bytes.
    size: u64,
}

const REPOSITORIES_VERSION: u32 = 1;

/// The image store under `<root>/images/`.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
}

/// A hold on the store's lock, released when dropped (the file is closed).
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

impl ImageStore {
    /// A handle on the store under `<root>/images/` that makes nothing: reads of a store that
    /// is not there fail (an in-memory runtime's store, which no test fills).
    pub fn unopened(root: &Path) -> ImageStore {
        ImageStore {
            dir: root.join("images"),
        }
    }

    /// Opens the store under `<root>/images/`, creating its directories if missing.
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        let store = ImageStore {
            dir: root.join("images"),
        };
        for d in [store.blobs_dir(), store.layers_dir(), store.tmp_dir()] {
            fs::create_dir_all(&d).map_err(|source| ImageError::Store {
                op: "create the store's directories",
                path: d.clone(),
                source,
            })?;
        }
        // Made here, not at the first change, so the store's listing is the same before and
        // after anything that changed nothing.
        let lock = store.dir.join("lock");
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
            .map_err(|source| ImageError::Lock { path: lock, source })?;
        Ok(store)
    }

    /// `<root>/images`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn blobs_dir(&self) -> PathBuf {
        self.dir.join("blobs/sha256")
    }

    fn layers_dir(&self) -> PathBuf {
        self.dir.join("layers/sha256")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    fn repositories_path(&self) -> PathBuf {
        self.dir.join("repositories.json")
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.blobs_dir().join(d.hex())
    }

    /// Where the layer with DiffID `diff_id` is unpacked.
    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.layers_dir().join(diff_id.hex())
    }

    /// Takes the store's lock shared: imports and removals (and so garbage collection) wait
    /// until it is dropped. Hold it from `resolve` until the container that uses the image is
    /// recorded where `remove`'s `in_use` looks, so the layers cannot vanish in between. Do not
    /// call `import` or `remove` while holding it: they would wait for it forever.
    pub fn lock_shared(&self) -> Result<StoreLock, ImageError> {
        self.flock(rustix::fs::FlockOperation::LockShared)
    }

    fn lock(&self) -> Result<StoreLock, ImageError> {
        self.flock(rustix::fs::FlockOperation::LockExclusive)
    }

    fn flock(&self, op: rustix::fs::FlockOperation) -> Result<StoreLock, ImageError> {
        let path = self.dir.join("lock");
        let err = |source| ImageError::Lock {
            path: path.clone(),
            source,
        };
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(err)?;
        rustix::fs::flock(&file, op).map_err(|e| err(e.into()))?;
        Ok(StoreLock { _file: file })
    }

    fn load(&self) -> Result<Repositories, ImageError> {
        let path = self.repositories_path();
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| ImageError::CorruptRepositories { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Repositories {
                version: REPOSITORIES_VERSION,
                ..Repositories::default()
            }),
            Err(source) => Err(ImageError::Store {
                op: "read the repositories file",
                path,
                source,
            }),
        }
    }

    /// Writes `repositories.json` atomically: after a crash, the old or the new version is
    /// there, never a torn one. The store's other files are synced first, so the new version
    /// never names a blob or layer whose content is not on disk.
    fn save_repositories(&self, repos: &Repositories) -> Result<(), ImageError> {
        let path = self.repositories_path();
        let tmp = self.dir.join("repositories.json.tmp");
        let err = |op, p: &Path| {
            let p = p.to_path_buf();
            move |source| ImageError::Store {
                op,
                path: p,
                source,
            }
        };
        let bytes = serde_json::to_vec_pretty(repos).map_err(|e| ImageError::Store {
            op: "serialize the repositories file",
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        let dirfd = File::open(&self.dir).map_err(err("open the store", &self.dir))?;
        rustix::fs::syncfs(dirfd.as_fd())
            .map_err(|e| err("sync the store", &self.dir)(e.into()))?;
        let mut f = File::create(&tmp).map_err(err("write the repositories file", &tmp))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(err("write the repositories file", &tmp))?;
        fs::rename(&tmp, &path).map_err(err("replace the repositories file", &path))?;
        dirfd
            .sync_all()
            .map_err(err("sync the store directory", &self.dir))
    }

    /// What `image inspect` shows of an image: its config document as stored, with the
    /// store's record (manifest digest, layer blobs and sizes).
    pub fn inspect(&self, reference: &str) -> Result<serde_json::Value, ImageError> {
        let repos = self.load()?;
        let id = find(&repos, reference)?;
        let rec = repos.images.get(&id).ok_or_else(|| ImageError::NotFound {
            reference: reference.to_string(),
        })?;
        let cfg_path = self.blob_path(&rec.config);
        let config: serde_json::Value = fs::read(&cfg_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let tags: Vec<&String> = repos
            .tags
            .iter()
            .filter(|(_, i)| **i == id)
            .map(|(t, _)| t)
            .collect();
        let repo_digests: Vec<String> = tags
            .iter()
            .map(|t| {
                let (r, _) = reference::repository_and_tag(t);
                format!("{r}@{}", rec.manifest)
            })
            .collect();
        Ok(serde_json::json!({
            "Id": id.to_string(),
            "RepoTags": tags,
            "RepoDigests": repo_digests,
            "Created": rec.created,
            "Architecture": config.get("architecture"),
            "Os": config.get("os"),
            "Size": rec.layers.iter().map(|l| l.size).sum::<u64>(),
            "Config": config.get("config"),
            "RootFS": {
                "Type": "layers",
                "Layers": rec.layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>(),
            },
            "Berth": {
                "Manifest": rec.manifest.to_string(),
                "Blobs": rec.layers.iter().map(|l| serde_json::json!({
                    "Digest": l.blob.to_string(), "DiffID": l.diff_id.to_string(), "Size": l.size,
                })).collect::<Vec<_>>(),
            },
        }))
    }

    /// Lists the images: one entry per tag, plus one for each untagged image.
    pub fn list(&self) -> Result<Vec<ImageInfo>, ImageError> {
        let repos = self.load()?;
        let mut out = Vec::new();
        let mut tagged = BTreeSet::new();
        for (tag, id) in &repos.tags {
            let Some(rec) = repos.images.get(id) else {
                continue;
            };
            tagged.insert(id);
            let (repository, t) = reference::repository_and_tag(tag);
            out.push(info(id, rec, Some(repository), Some(t)));
        }
        for (id, rec) in &repos.images {
            if !tagged.contains(id) {
                out.push(info(id, rec, None, None));
            }
        }
        Ok(out)
    }

    /// Finds an image by tag (`busybox`, `busybox:latest`, `docker.io/library/busybox:latest`
    /// all match a stored `busybox:latest`), by manifest digest (`busybox@sha256:<hex>`, the
    /// name is not checked), by id (`sha256:<hex>`), or by an unambiguous prefix of its id
    /// (`sha256:` optional, at least 4 hex digits).
    pub fn resolve(&self, reference: &str) -> Result<Image, ImageError> {
        let repos = self.load()?;
        let id = find(&repos, reference)?;
        let rec = repos.images.get(&id).ok_or_else(|| ImageError::NotFound {
            reference: reference.to_string(),
        })?;
        let mut layers = Vec::with_capacity(rec.layers.len());
        for l in &rec.layers {
            let path = self.layer_path(&l.diff_id);
            if !path.is_dir() {
                return Err(ImageError::MissingLayer {
                    id: id.to_string(),
                    diff_id: l.diff_id.to_string(),
                    path,
                });
            }
            layers.push(path);
        }
        let cfg_path = self.blob_path(&rec.config);
        let bytes = fs::read(&cfg_path).map_err(|source| ImageError::ReadConfig {
            id: id.to_string(),
            path: cfg_path.clone(),
            source,
        })?;
        let raw: RawImage = serde_json::from_slice(&bytes).map_err(|e| ImageError::ReadConfig {
            id: id.to_string(),
            path: cfg_path,
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })?;
        Ok(Image {
            id: id.to_string(),
            layers,
            config: raw.config.unwrap_or_default().into(),
        })
    }

    /// Removes a tag, or an image by id. The image itself is deleted when its last tag goes
    /// (or it is named by id), unless `in_use(id)` says a container uses it, which refuses the
    /// whole removal. Blobs and layers no longer referenced by any image are then deleted.
    pub fn remove(
        &self,
        reference: &str,
        in_use: &dyn Fn(&str) -> bool,
    ) -> Result<Removed, ImageError> {
        let _lock = self.lock()?;
        let mut repos = self.load()?;
        let id = find(&repos, reference)?;
        let by_tag: Vec<String> = matching_tags(&repos, reference).collect();
        let mut removed = Removed::default();
        let remaining = repos
            .tags
            .iter()
            .filter(|(t, i)| **i == id && !by_tag.contains(t))
            .count();
        let delete = by_tag.is_empty() || remaining == 0;
        if delete && in_use(&id.to_string()) {
            return Err(ImageError::InUse {
                reference: reference.to_string(),
                id: id.to_string(),
            });
        }
        if delete {
            repos.tags.retain(|t, i| {
                if *i == id {
                    removed.untagged.push(t.clone());
                }
                *i != id
            });
            repos.images.remove(&id);
            removed.deleted = Some(id.to_string());
        } else {
            for t in by_tag {
                repos.tags.remove(&t);
                removed.untagged.push(t);
            }
        }
        self.save_repositories(&repos)?;
        let (blobs, layers) = self.gc(&repos)?;
        removed.blobs_freed = blobs;
        removed.layers_freed = layers;
        Ok(removed)
    }

    /// Deletes every untagged image that `in_use` does not claim (`berth image prune`), then
    /// the blobs and layers only they used.
    pub fn prune(&self, in_use: &dyn Fn(&str) -> bool) -> Result<Removed, ImageError> {
        self.prune_images(in_use, false)
    }

    /// `prune`, and with `all` (`image prune -a`) tagged images no container uses as well,
    /// their tags with them.
    pub fn prune_images(
        &self,
        in_use: &dyn Fn(&str) -> bool,
        all: bool,
    ) -> Result<Removed, ImageError> {
        let _lock = self.lock()?;
        let mut repos = self.load()?;
        let mut untagged = Vec::new();
        if all {
            repos.tags.retain(|t, id| {
                let keep = in_use(&id.to_string());
                if !keep {
                    untagged.push(t.clone());
                }
                keep
            });
        }
        let tagged: BTreeSet<Digest> = repos.tags.values().cloned().collect();
        let doomed: Vec<Digest> = repos
            .images
            .keys()
            .filter(|id| !tagged.contains(*id) && !in_use(&id.to_string()))
            .cloned()
            .collect();
        for id in &doomed {
            repos.images.remove(id);
        }
        if !doomed.is_empty() || !untagged.is_empty() {
            self.save_repositories(&repos)?;
        }
        let (blobs_freed, layers_freed) = self.gc(&repos)?;
        Ok(Removed {
            untagged,
            deleted: None,
            pruned: doomed.iter().map(Digest::to_string).collect(),
            blobs_freed,
            layers_freed,
        })
    }

    /// Deletes blobs and layers that no image in `repos` references. Caller holds the lock.
    fn gc(&self, repos: &Repositories) -> Result<(usize, usize), ImageError> {
        let mut blobs = BTreeSet::new();
        let mut layers = BTreeSet::new();
        for rec in repos.images.values() {
            blobs.insert(rec.manifest.hex().to_string());
            blobs.insert(rec.config.hex().to_string());
            for l in &rec.layers {
                blobs.insert(l.blob.hex().to_string());
                layers.insert(l.diff_id.hex().to_string());
            }
        }
        let mut freed = (0, 0);
        for (dir, keep, is_layer) in [
            (self.blobs_dir(), &blobs, false),
            (self.layers_dir(), &layers, true),
        ] {
            let rd = fs::read_dir(&dir).map_err(|source| ImageError::Store {
                op: "list for garbage collection",
                path: dir.clone(),
                source,
            })?;
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                // Only what the store itself names; anything else is not ours to delete.
                if Digest::from_hex(&name).is_none() || keep.contains(&name) {
                    continue;
                }
                let path = e.path();
                let res = if is_layer {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                res.map_err(|source| ImageError::Store {
                    op: "delete an unreferenced blob or layer",
                    path: path.clone(),
                    source,
                })?;
                if is_layer {
                    freed.1 += 1;
                } else {
                    freed.0 += 1;
                }
            }
        }
        Ok(freed)
    }

    /// Imports every image of a docker-save or OCI-layout tarball (plain or gzip). Nothing is
    /// added unless everything verifies.
    pub fn import(&self, tarball: &Path) -> Result<Vec<ImageInfo>, ImageError> {
        let _lock = self.lock()?;
        self.clean_tmp()?;
        let staging = TempDir::new(&self.tmp_dir(), "import")?;
        let members = staging.path.join("members");
        let layers = staging.path.join("layers");
        for d in [&members, &layers] {
            fs::create_dir(d).map_err(|source| ImageError::Store {
                op: "create a staging directory",
                path: d.clone(),
                source,
            })?;
        }
        let staged = Staged::read(tarball, &members)?;
        let images = if staged.has("manifest.json") {
            plan_docker_save(&staged)?
        } else if staged.has("index.json") && staged.has("oci-layout") {
            plan_oci(&staged)?
        } else {
            return Err(ImageError::UnknownFormat {
                path: tarball.to_path_buf(),
            });
        };
        self.finish_import(images, &staging, &layers)
    }

    /// Names the image `source` (a reference or an id) also `target`, as `docker tag` does;
    /// the tag moves off any image that had it.
    pub fn tag(&self, source: &str, target: &str) -> Result<(), ImageError> {
        let _lock = self.lock()?;
        let mut repos = self.load()?;
        let id = find(&repos, source)?;
        let t = reference::normalize_tag(target)?;
        let existing: Vec<String> = matching_tags(&repos, &t).collect();
        for e in existing {
            repos.tags.remove(&e);
        }
        repos.tags.insert(t, id);
        self.save_repositories(&repos)
    }

    /// Imports the OCI image layout whose members are already in files (named as in the
    /// layout: `index.json`, `blobs/sha256/<hex>`), as a project import stages them while it
    /// reads its archive. The files must be on the store's file system: they are moved in.
    /// Nothing is added unless everything verifies.
    pub fn import_layout(
        &self,
        origin: &Path,
        members: HashMap<String, Member>,
    ) -> Result<Vec<ImageInfo>, ImageError> {
        let _lock = self.lock()?;
        self.clean_tmp()?;
        let staging = TempDir::new(&self.tmp_dir(), "import")?;
        let layers = staging.path.join("layers");
        fs::create_dir(&layers).map_err(|source| ImageError::Store {
            op: "create a staging directory",
            path: layers.clone(),
            source,
        })?;
        let staged = Staged::from_members(origin.to_path_buf(), members);
        let images = plan_oci(&staged)?;
        self.finish_import(images, &staging, &layers)
    }

    /// Verifies and unpacks the layers of `images` (staged in `staging`), then commits them
    /// and their records. Caller holds the lock.
    fn finish_import(
        &self,
        images: Vec<PlannedImage>,
        staging: &TempDir,
        layers: &Path,
    ) -> Result<Vec<ImageInfo>, ImageError> {
        let mut repos = self.load()?;
        let prepared = self.prepare_layers(&images, &repos, layers)?;
        let result = self.commit(&images, &prepared, &staging.path, &mut repos);
        if result.is_err()
            && let Ok(saved) = self.load()
        {
            // Moved-in blobs or layers that no saved record references; best effort, the
            // next garbage collection retries.
            let _ = self.gc(&saved);
        }
        result?;
        // Also collects what an import that crashed between its renames and its
        // repositories.json left behind.
        if let Err(e) = self.gc(&repos) {
            tracing::warn!("image store garbage collection after import: {e}");
        }
        let mut out = Vec::new();
        for img in &images {
            let id = &img.config_digest;
            let Some(rec) = repos.images.get(id) else {
                continue;
            };
            if img.tags.is_empty() {
                out.push(info(id, rec, None, None));
            }
            for t in &img.tags {
                let (r, tag) = reference::repository_and_tag(t);
                out.push(info(id, rec, Some(r), Some(tag)));
            }
        }
        Ok(out)
    }

    /// Removes what an interrupted import left in `tmp/`. Caller holds the lock, so no import
    /// is running.
    fn clean_tmp(&self) -> Result<(), ImageError> {
        let tmp = self.tmp_dir();
        let rd = fs::read_dir(&tmp).map_err(|source| ImageError::Store {
            op: "list the staging directory",
            path: tmp.clone(),
            source,
        })?;
        for e in rd.flatten() {
            let p = e.path();
            let res = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            res.map_err(|source| ImageError::Store {
                op: "remove a stale staging directory",
                path: p.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Verifies every layer's DiffID and unpacks the layers the store lacks into `dest`.
    fn prepare_layers(
        &self,
        images: &[PlannedImage],
        repos: &Repositories,
        dest: &Path,
    ) -> Result<HashMap<Digest, PreparedLayer>, ImageError> {
        // Only a (blob, DiffID) pair some earlier import verified may skip verification: the
        // same layer from another blob, or the same blob claimed for another DiffID, is checked.
        let known: HashMap<(&Digest, &Digest), u64> = repos
            .images
            .values()
            .flat_map(|r| r.layers.iter().map(|l| ((&l.blob, &l.diff_id), l.size)))
            .collect();
        let mut done: HashMap<Digest, PreparedLayer> = HashMap::new();
        let mut verified: HashMap<(Digest, Digest), u64> = HashMap::new();
        for img in images {
            for l in &img.layers {
                let have_layer =
                    done.contains_key(&l.diff_id) || self.layer_path(&l.diff_id).is_dir();
                let pair = (l.member.digest.clone(), l.diff_id.clone());
                let known_size = verified.get(&pair).copied().or_else(|| {
                    known
                        .get(&(&l.member.digest, &l.diff_id))
                        .copied()
                        .filter(|_| self.blob_path(&l.member.digest).is_file())
                });
                if have_layer && let Some(size) = known_size {
                    done.entry(l.diff_id.clone()).or_insert(PreparedLayer {
                        unpacked: None,
                        size,
                    });
                    continue;
                }
                let (reader, kind) =
                    archive::open_decompressed(&l.member.file).map_err(|source| {
                        ImageError::Store {
                            op: "read a staged layer",
                            path: l.member.file.clone(),
                            source,
                        }
                    })?;
                if kind == Compression::Zstd {
                    return Err(ImageError::UnsupportedLayer {
                        layer: l.name.clone(),
                        what: "zstd-compressed layers are not supported yet",
                    });
                }
                let mut hr = HashReader::new(reader);
                let unpacked = if have_layer {
                    None
                } else {
                    let dir = dest.join(l.diff_id.hex());
                    fs::create_dir(&dir).map_err(|source| ImageError::Store {
                        op: "create a layer staging directory",
                        path: dir.clone(),
                        source,
                    })?;
                    unpack::unpack_layer(&mut hr, &dir, &l.name)?;
                    Some(dir)
                };
                let (diff_id, size) = hr.finish().map_err(|source| ImageError::ReadLayer {
                    layer: l.name.clone(),
                    source,
                })?;
                if diff_id != l.diff_id {
                    return Err(ImageError::DiffIdMismatch {
                        layer: l.name.clone(),
                        expected: l.diff_id.to_string(),
                        actual: diff_id.to_string(),
                    });
                }
                verified.insert(pair, size);
                // A layer met twice (two blobs of it, say gzip and plain) keeps its first
                // unpacking; later passes only verified their blob.
                done.entry(l.diff_id.clone())
                    .or_insert(PreparedLayer { unpacked, size });
            }
        }
        Ok(done)
    }

    /// Moves verified blobs and unpacked layers into the store and records the images.
    fn commit(
        &self,
        images: &[PlannedImage],
        prepared: &HashMap<Digest, PreparedLayer>,
        staging: &Path,
        repos: &mut Repositories,
    ) -> Result<(), ImageError> {
        let store_err = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| ImageError::Store { op, path, source }
        };
        let mut n = 0;
        let mut put_bytes = |digest: &Digest, bytes: &[u8]| -> Result<(), ImageError> {
            let dst = self.blob_path(digest);
            if dst.is_file() {
                return Ok(());
            }
            n += 1;
            let tmp = staging.join(format!("doc{n}"));
            fs::write(&tmp, bytes).map_err(store_err("write a blob", &tmp))?;
            fs::rename(&tmp, &dst).map_err(store_err("move a blob into the store", &dst))
        };
        for img in images {
            put_bytes(&img.config_digest, &img.config_bytes)?;
            put_bytes(&img.manifest_digest, &img.manifest_bytes)?;
        }
        for img in images {
            for l in &img.layers {
                // A member shared by two images was moved for the first; the blob is there.
                let dst = self.blob_path(&l.member.digest);
                if !dst.is_file() {
                    fs::rename(&l.member.file, &dst)
                        .map_err(store_err("move a blob into the store", &dst))?;
                }
            }
        }
        for (diff_id, p) in prepared {
            if let Some(dir) = &p.unpacked {
                let dst = self.layer_path(diff_id);
                if !dst.exists() {
                    fs::rename(dir, &dst)
                        .map_err(store_err("move an unpacked layer into the store", &dst))?;
                }
            }
        }
        for img in images {
            let id = img.config_digest.clone();
            let layers = img
                .layers
                .iter()
                .map(|l| LayerRecord {
                    diff_id: l.diff_id.clone(),
                    blob: l.member.digest.clone(),
                    size: prepared.get(&l.diff_id).map_or(0, |p| p.size),
                })
                .collect();
            repos.images.insert(
                id.clone(),
                ImageRecord {
                    manifest: img.manifest_digest.clone(),
                    config: id.clone(),
                    layers,
                    created: img.created.clone(),
                },
            );
            for t in &img.tags {
                // A tag names one image; re-importing a tag moves it, leaving the previous
                // image untagged (a container may still use it).
                let existing: Vec<String> = matching_tags(repos, t).collect();
                for e in existing {
                    repos.tags.remove(&e);
                }
                repos.tags.insert(t.clone(), id.clone());
            }
        }
        repos.version = REPOSITORIES_VERSION;
        self.save_repositories(repos)
    }
}

fn info(
    id: &Digest,
    rec: &ImageRecord,
    repository: Option<String>,
    tag: Option<String>,
) -> ImageInfo {
    ImageInfo {
        repository,
        tag,
        id: id.to_string(),
        size: rec.layers.iter().map(|l| l.size).sum(),
        created: rec.created.clone(),
    }
}

/// The stored tags that `reference` names (canonical forms compared).
fn matching_tags<'a>(
    repos: &'a Repositories,
    reference: &str,
) -> impl Iterator<Item = String> + 'a {
    let want = reference::normalize_tag(reference)
        .ok()
        .map(|t| reference::canonical(&t));
    repos
        .tags
        .keys()
        .filter(move |t| want.as_deref() == Some(reference::canonical(t).as_str()))
        .cloned()
}

/// The image id `reference` names: `name@sha256:<manifest digest>`, a tag, then an id or id
/// prefix.
fn find(repos: &Repositories, reference: &str) -> Result<Digest, ImageError> {
    if let Some((_, digest)) = reference.split_once('@') {
        let d = Digest::parse(digest).map_err(|_| ImageError::InvalidReference {
            reference: reference.to_string(),
            reason: "expected `name@sha256:<64 hex digits>`",
        })?;
        return repos
            .images
            .iter()
            .find(|(_, rec)| rec.manifest == d)
            .map(|(id, _)| id.clone())
            .ok_or_else(|| ImageError::NotFound {
                reference: reference.to_string(),
            });
    }
    if let Some(t) = matching_tags(repos, reference).next()
        && let Some(id) = repos.tags.get(&t)
    {
        return Ok(id.clone());
    }
    let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
    let is_hex = hex.len() >= 4 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if is_hex {
        let found: Vec<&Digest> = repos
            .images
            .keys()
            .filter(|id| id.hex().starts_with(hex))
            .collect();
        match found.as_slice() {
            [one] => return Ok((*one).clone()),
            [] => {}
            many => {
                return Err(ImageError::Ambiguous {
                    reference: reference.to_string(),
                    candidates: many.iter().map(|d| d.to_string()).collect(),
                });
            }
        }
    }
    Err(ImageError::NotFound {
        reference: reference.to_string(),
    })
}

/// An image of the tarball, verified except for its layers' DiffIDs.
struct PlannedImage {
    tags: Vec<String>,
    config_digest: Digest,
    config_bytes: Vec<u8>,
    manifest_digest: Digest,
    manifest_bytes: Vec<u8>,
    created: Option<String>,
    layers: Vec<PlannedLayer>,
}

struct PlannedLayer {
    /// The member's name in the tarball, for errors.
    name: String,
    member: Member,
    diff_id: Digest,
}

struct PreparedLayer {
    /// The staging directory it was unpacked into; `None` when the store already has it.
    unpacked: Option<PathBuf>,
    size: u64,
}

/// A directory removed when dropped.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(parent: &Path, prefix: &str) -> Result<TempDir, ImageError> {
        let path = parent.join(format!("{prefix}-{}", std::process::id()));
        fs::create_dir(&path).map_err(|source| ImageError::Store {
            op: "create a staging directory",
            path: path.clone(),
            source,
        })?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Reads a config, checks it against the layers, and builds the image's plan.
fn plan_image(
    staged: &Staged,
    tags: Vec<String>,
    config_name: &str,
    config: &Member,
    manifest: Option<(Digest, Vec<u8>)>,
    layers: Vec<(String, Member)>,
) -> Result<PlannedImage, ImageError> {
    let (raw, config_bytes): (RawImage, Vec<u8>) = staged.json(config_name, config)?;
    if raw.rootfs.diff_ids.len() != layers.len() {
        return Err(ImageError::LayerCount {
            config: config_name.to_string(),
            layers: layers.len(),
            diff_ids: raw.rootfs.diff_ids.len(),
        });
    }
    let mut planned = Vec::with_capacity(layers.len());
    for ((name, member), diff_id) in layers.into_iter().zip(&raw.rootfs.diff_ids) {
        planned.push(PlannedLayer {
            name,
            member,
            diff_id: Digest::parse(diff_id)?,
        });
    }
    let (manifest_digest, manifest_bytes) = match manifest {
        Some(m) => m,
        None => synthesize_manifest(config, &planned)?,
    };
    Ok(PlannedImage {
        tags,
        config_digest: config.digest.clone(),
        config_bytes,
        manifest_digest,
        manifest_bytes,
        created: raw.created,
        layers: planned,
    })
}

/// docker-save tarballs carry no manifest blob; an OCI manifest is made for them so that
/// every image in the store has the same shape (and can be saved or pushed as OCI later).
fn synthesize_manifest(
    config: &Member,
    layers: &[PlannedLayer],
) -> Result<(Digest, Vec<u8>), ImageError> {
    let descriptor = |media_type: &str, m: &Member| Descriptor {
        media_type: media_type.to_string(),
        digest: m.digest.to_string(),
        size: i64::try_from(m.size).unwrap_or(i64::MAX),
        ..Descriptor::default()
    };
    let mut layer_descs = Vec::new();
    for l in layers {
        let mut head = [0u8; 4];
        let n = File::open(&l.member.file)
            .and_then(|mut f| f.read(&mut head))
            .map_err(|source| ImageError::Store {
                op: "read a staged layer",
                path: l.member.file.clone(),
                source,
            })?;
        let mt = match archive::sniff(&head[..n]) {
            Compression::Gzip => config::MT_OCI_LAYER_GZIP,
            _ => config::MT_OCI_LAYER,
        };
        layer_descs.push(descriptor(mt, &l.member));
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(config::MT_OCI_MANIFEST.to_string()),
        config: descriptor(config::MT_OCI_CONFIG, config),
        layers: layer_descs,
    };
    let bytes = serde_json::to_vec(&manifest).map_err(|e| ImageError::Store {
        op: "serialize a manifest",
        path: PathBuf::from("manifest"),
        source: io::Error::other(e),
    })?;
    Ok((Digest::of(&bytes), bytes))
}

fn normalize_tags(tags: impl IntoIterator<Item = String>) -> Result<Vec<String>, ImageError> {
    let mut out: Vec<String> = Vec::new();
    for t in tags {
        let t = reference::normalize_tag(&t)?;
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

fn plan_docker_save(staged: &Staged) -> Result<Vec<PlannedImage>, ImageError> {
    let m = staged.require("manifest.json", "the docker-save format")?;
    let (entries, _): (Vec<DockerSaveEntry>, _) = staged.json("manifest.json", m)?;
    let mut out = Vec::new();
    for e in entries {
        let config = staged.require(&e.config, "manifest.json")?.clone();
        archive::check_named_member(&e.config, &config)?;
        let mut layers = Vec::new();
        for l in &e.layers {
            let member = staged.require(l, "manifest.json")?.clone();
            archive::check_named_member(l, &member)?;
            layers.push((l.clone(), member));
        }
        let tags = normalize_tags(e.repo_tags.unwrap_or_default())?;
        out.push(plan_image(staged, tags, &e.config, &config, None, layers)?);
    }
    Ok(out)
}

fn platform_matches(d: &Descriptor) -> bool {
    d.platform
        .as_ref()
        .is_none_or(|p| p.os == "linux" && p.architecture == config::host_arch())
}

fn is_index(media_type: &str, doc: &serde_json::Value) -> bool {
    match media_type {
        config::MT_OCI_INDEX | config::MT_DOCKER_LIST => true,
        config::MT_OCI_MANIFEST | config::MT_DOCKER_MANIFEST => false,
        _ => doc.get("manifests").is_some(),
    }
}

fn plan_oci(staged: &Staged) -> Result<Vec<PlannedImage>, ImageError> {
    let m = staged.require("index.json", "the OCI image layout")?;
    let (index, _): (Index, _) = staged.json("index.json", m)?;
    let mut by_id: Vec<PlannedImage> = Vec::new();
    let candidates: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| platform_matches(d))
        .collect();
    if candidates.is_empty() {
        return Err(ImageError::NoMatchingPlatform {
            path: staged.tarball.clone(),
            index: "index.json".into(),
            arch: config::host_arch().into(),
        });
    }
    for desc in candidates {
        let tags = normalize_tags(reference::from_oci_annotations(&desc.annotations))?;
        let Some(img) = plan_oci_descriptor(staged, desc, tags, 0)? else {
            continue;
        };
        match by_id
            .iter_mut()
            .find(|p| p.config_digest == img.config_digest)
        {
            Some(p) => {
                for t in img.tags {
                    if !p.tags.contains(&t) {
                        p.tags.push(t);
                    }
                }
            }
            None => by_id.push(img),
        }
    }
    if by_id.is_empty() {
        return Err(ImageError::BadFormat {
            path: staged.tarball.clone(),
            what: "index.json lists no container image".into(),
        });
    }
    Ok(by_id)
}

/// Follows a descriptor from an index to one image manifest (picking this host's platform in
/// nested indexes). `None` for descriptors that are not images (attestations, artifacts).
fn plan_oci_descriptor(
    staged: &Staged,
    desc: &Descriptor,
    tags: Vec<String>,
    depth: u32,
) -> Result<Option<PlannedImage>, ImageError> {
    if depth > 4 {
        return Err(ImageError::BadFormat {
            path: staged.tarball.clone(),
            what: format!("indexes nested too deeply at {}", desc.digest),
        });
    }
    let digest = Digest::parse(&desc.digest)?;
    let name = format!("blobs/sha256/{}", digest.hex());
    let member = staged.blob(&digest, Some(desc.size), "index.json")?;
    let (doc, bytes): (serde_json::Value, Vec<u8>) = staged.json(&name, member)?;
    let media_type = if desc.media_type.is_empty() {
        doc.get("mediaType")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    } else {
        desc.media_type.clone()
    };
    let bad_json = |source| ImageError::BadJson {
        path: staged.tarball.clone(),
        member: name.clone(),
        source,
    };
    if is_index(&media_type, &doc) {
        let index: Index = serde_json::from_value(doc).map_err(bad_json)?;
        let Some(chosen) = index
            .manifests
            .iter()
            .find(|d| d.platform.is_some() && platform_matches(d))
            .or_else(|| index.manifests.iter().find(|d| d.platform.is_none()))
        else {
            return Err(ImageError::NoMatchingPlatform {
                path: staged.tarball.clone(),
                index: name,
                arch: config::host_arch().into(),
            });
        };
        return plan_oci_descriptor(staged, chosen, tags, depth + 1);
    }
    if !matches!(
        media_type.as_str(),
        config::MT_OCI_MANIFEST | config::MT_DOCKER_MANIFEST | ""
    ) {
        tracing::debug!(digest = %desc.digest, media_type, "skipping a non-image descriptor");
        return Ok(None);
    }
    let manifest: Manifest = serde_json::from_value(doc).map_err(bad_json)?;
    let cfg_mt = manifest.config.media_type.as_str();
    if !matches!(
        cfg_mt,
        config::MT_OCI_CONFIG | "application/vnd.docker.container.image.v1+json" | ""
    ) {
        return Err(ImageError::BadFormat {
            path: staged.tarball.clone(),
            what: format!("{name} is not a container image (its config is `{cfg_mt}`)"),
        });
    }
    let cfg_digest = Digest::parse(&manifest.config.digest)?;
    let cfg_name = format!("blobs/sha256/{}", cfg_digest.hex());
    let config = staged
        .blob(&cfg_digest, Some(manifest.config.size), &name)?
        .clone();
    let mut layers = Vec::new();
    for l in &manifest.layers {
        let d = Digest::parse(&l.digest)?;
        let member = staged.blob(&d, Some(l.size), &name)?.clone();
        layers.push((format!("blobs/sha256/{}", d.hex()), member));
    }
    plan_image(
        staged,
        tags,
        &cfg_name,
        &config,
        Some((digest, bytes)),
        layers,
    )
    .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::of(&[n])
    }

    fn repos() -> Repositories {
        let rec = |n: u8| ImageRecord {
            manifest: d(100 + n),
            config: d(n),
            layers: Vec::new(),
            created: None,
        };
        let mut r = Repositories::default();
        for n in 0..40 {
            r.images.insert(d(n), rec(n));
        }
        r.tags.insert("busybox:latest".into(), d(1));
        r.tags.insert("localhost:5000/app:1".into(), d(2));
        r
    }

    #[test]
    fn finds_by_tag_digest_and_id() {
        let r = repos();
        let found = |s: &str| find(&r, s).map_err(|e| e.to_string());
        for s in [
            "busybox",
            "busybox:latest",
            "docker.io/busybox",
            "docker.io/library/busybox:latest",
            "index.docker.io/library/busybox",
        ] {
            assert_eq!(found(s), Ok(d(1)), "{s}");
        }
        assert_eq!(found("localhost:5000/app:1"), Ok(d(2)));
        assert!(found("localhost:5000/app").is_err());
        assert_eq!(found(&format!("anything@{}", d(102))), Ok(d(2)));
        assert!(matches!(
            find(&r, "busybox@sha256:12"),
            Err(ImageError::InvalidReference { .. })
        ));
        assert_eq!(found(&d(3).to_string()), Ok(d(3)));
        assert_eq!(found(&d(3).hex()[..12]), Ok(d(3)));
        assert!(matches!(
            find(&r, &d(3).hex()[..3]),
            Err(ImageError::NotFound { .. })
        ));
        let mut r = r;
        for hex in ["abcd".repeat(16), format!("abcd{}", "0".repeat(60))] {
            let id = Digest::from_hex(&hex).unwrap_or_else(|| d(0));
            let rec = r.images.get(&d(0)).cloned();
            r.images.extend(rec.map(|rec| (id, rec)));
        }
        assert!(matches!(
            find(&r, "abcd"),
            Err(ImageError::Ambiguous { candidates, .. }) if candidates.len() == 2
        ));
        assert_eq!(
            find(&r, "sha256:abcda").ok(),
            Digest::from_hex(&"abcd".repeat(16))
        );
    }
}
