//! `berth save`: images out of the store as one tarball that `docker load`, `berth image
//! import`, `podman load` and skopeo (`docker-archive:` and `oci-archive:`) all read. It is
//! what Docker 25+ writes: an OCI image layout (`oci-layout`, `index.json`, `blobs/`) with
//! the docker-save `manifest.json` beside it pointing at the same blobs, so every blob is in
//! the archive once, exactly as the store holds it (layers keep their compression; digests
//! stay valid).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Write};

use super::{Digest, ImageError, ImageStore, find, matching_tags, reference};

/// What `save` wrote.
#[derive(Debug, Clone, Default)]
pub struct Saved {
    /// `repo:tag` names, or image ids for images saved by id.
    pub images: Vec<String>,
    pub blobs: usize,
    pub bytes: u64,
}

fn blob_name(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// One member `save_into` wrote: its name in the archive, size and sha256.
#[derive(Debug, Clone)]
pub struct SavedMember {
    pub name: String,
    pub size: u64,
    pub digest: Digest,
}

impl ImageStore {
    /// Writes the images named by `refs` to `out` as a tar stream. A name that resolves to an
    /// image saves the tags of that image it names (`bb` saves `bb:latest`); an id saves the
    /// image with no tag, as `docker save` does.
    pub fn save(&self, refs: &[String], out: impl Write) -> Result<Saved, ImageError> {
        let mut tar = tar::Builder::new(out);
        let saved = self.save_into(refs, &mut tar, "", true, &mut |_| {})?;
        tar.into_inner()
            .and_then(|mut w| w.flush())
            .map_err(write_err)?;
        Ok(saved)
    }

    /// The bytes of the blobs a save of `refs` writes (each blob once).
    pub fn saved_bytes(&self, refs: &[String]) -> Result<u64, ImageError> {
        let repos = self.load()?;
        let mut seen: BTreeSet<Digest> = BTreeSet::new();
        let mut total = 0;
        for r in refs {
            let id = find(&repos, r)?;
            let Some(rec) = repos.images.get(&id) else {
                continue;
            };
            let blobs = [&rec.manifest, &rec.config]
                .into_iter()
                .chain(rec.layers.iter().map(|l| &l.blob));
            for d in blobs {
                if seen.insert(d.clone()) {
                    total += std::fs::metadata(self.blob_path(d)).map_or(0, |m| m.len());
                }
            }
        }
        Ok(total)
    }

    /// Appends the OCI layout of the images named by `refs` to `tar`, every member's name
    /// starting with `prefix` (`images/` in a project export); `docker`: the docker-save
    /// `manifest.json` too. `wrote` hears of each member as it is written (blobs are named by
    /// their digest, which the store checked when it took them in).
    pub fn save_into<W: Write>(
        &self,
        refs: &[String],
        tar: &mut tar::Builder<W>,
        prefix: &str,
        docker: bool,
        wrote: &mut dyn FnMut(&SavedMember),
    ) -> Result<Saved, ImageError> {
        // Readers take no lock (module doc); the blobs of a listed image are not removed
        // while a save holds a shared lock.
        let _lock = self.lock_shared()?;
        let repos = self.load()?;
        let mut chosen: Vec<(Digest, Vec<String>)> = Vec::new();
        for r in refs {
            let id = find(&repos, r)?;
            let tags: Vec<String> = matching_tags(&repos, r).collect();
            match chosen.iter_mut().find(|(i, _)| *i == id) {
                Some((_, t)) => {
                    for x in tags {
                        if !t.contains(&x) {
                            t.push(x);
                        }
                    }
                }
                None => chosen.push((id, tags)),
            }
        }
        let mut saved = Saved::default();
        let mut written: BTreeSet<Digest> = BTreeSet::new();
        let mut index = Vec::new();
        let mut docker_entries = Vec::new();
        for (id, tags) in &chosen {
            let Some(rec) = repos.images.get(id) else {
                continue;
            };
            let blobs = std::iter::once(&rec.manifest)
                .chain(std::iter::once(&rec.config))
                .chain(rec.layers.iter().map(|l| &l.blob));
            for d in blobs {
                if !written.insert(d.clone()) {
                    continue;
                }
                let path = self.blob_path(d);
                let read_err = |source| ImageError::Store {
                    op: "read a blob to save",
                    path: path.clone(),
                    source,
                };
                let mut f = File::open(&path).map_err(read_err)?;
                let len = f.metadata().map_err(read_err)?.len();
                let name = format!("{prefix}{}", blob_name(d));
                tar.append_data(&mut header(len), &name, &mut f)
                    .map_err(write_err)?;
                wrote(&SavedMember {
                    name,
                    size: len,
                    digest: d.clone(),
                });
                saved.blobs += 1;
                saved.bytes += len;
            }
            let manifest_path = self.blob_path(&rec.manifest);
            let manifest = std::fs::read(&manifest_path).map_err(|source| ImageError::Store {
                op: "read a manifest to save",
                path: manifest_path.clone(),
                source,
            })?;
            let media_type = serde_json::from_slice::<serde_json::Value>(&manifest)
                .ok()
                .and_then(|v| v.get("mediaType")?.as_str().map(str::to_string))
                .unwrap_or_else(|| super::config::MT_OCI_MANIFEST.to_string());
            let full: Vec<String> = tags.iter().map(|t| reference::canonical(t)).collect();
            let descriptor = |annotations: serde_json::Value| {
                serde_json::json!({
                    "mediaType": media_type,
                    "digest": rec.manifest.to_string(),
                    "size": manifest.len(),
                    "annotations": annotations,
                })
            };
            if tags.is_empty() {
                index.push(descriptor(serde_json::json!({})));
                saved.images.push(id.to_string());
            }
            for (t, f) in tags.iter().zip(&full) {
                let (_, tag) = reference::repository_and_tag(t);
                index.push(descriptor(serde_json::json!({
                    "io.containerd.image.name": f,
                    "org.opencontainers.image.ref.name": tag,
                })));
                saved.images.push(t.clone());
            }
            docker_entries.push(serde_json::json!({
                "Config": blob_name(&rec.config),
                "RepoTags": tags,
                "Layers": rec.layers.iter().map(|l| blob_name(&l.blob)).collect::<Vec<_>>(),
            }));
        }
        let mut docs = vec![
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
            (
                "index.json",
                serde_json::to_vec(&serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": super::config::MT_OCI_INDEX,
                    "manifests": index,
                }))
                .unwrap_or_default(),
            ),
        ];
        if docker {
            docs.push((
                "manifest.json",
                serde_json::to_vec(&docker_entries).unwrap_or_default(),
            ));
        }
        for (name, bytes) in docs {
            let name = format!("{prefix}{name}");
            tar.append_data(&mut header(bytes.len() as u64), &name, bytes.as_slice())
                .map_err(write_err)?;
            wrote(&SavedMember {
                size: bytes.len() as u64,
                digest: Digest::of(&bytes),
                name,
            });
        }
        Ok(saved)
    }
}

fn write_err(source: io::Error) -> ImageError {
    ImageError::Store {
        op: "write the saved tarball",
        path: "-".into(),
        source,
    }
}

/// A plain file entry: mode 0644, owned by root, time 0, so two saves of the same images are
/// the same bytes.
fn header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}
