//! Images made on this host (a build step's result): a parent image, plus at most one new
//! layer, under a new config. The new image is staged as an OCI layout, as a pull is, and goes
//! through the same verification and commit as an import, so a failed commit adds nothing
//! and the parent's blobs and layers are shared, never copied.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::archive::{Member, Staged};
use super::config::{MT_OCI_CONFIG, MT_OCI_LAYER, MT_OCI_LAYER_GZIP, MT_OCI_MANIFEST, host_arch};
use super::{Digest, ImageError, ImageStore, TempDir, find};

fn store_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ImageError {
    let path = path.to_path_buf();
    move |source| ImageError::Store { op, path, source }
}

fn digest_of_file(path: &Path) -> Result<(Digest, u64), ImageError> {
    super::digest::digest_of_path(path).map_err(store_err("read a new layer", path))
}

impl ImageStore {
    /// The config document of an image (`architecture`, `os`, `config`, `rootfs`, `history`),
    /// or, for `None` (`FROM scratch`), an empty one for this host's platform.
    pub fn config_document(&self, id: Option<&str>) -> Result<serde_json::Value, ImageError> {
        let Some(id) = id else {
            return Ok(serde_json::json!({
                "architecture": host_arch(),
                "os": "linux",
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": []},
                "history": [],
            }));
        };
        let repos = self.load()?;
        let d = find(&repos, id)?;
        let rec = repos.images.get(&d).ok_or_else(|| ImageError::NotFound {
            reference: id.to_string(),
        })?;
        let path = self.blob_path(&rec.config);
        let bytes = fs::read(&path).map_err(store_err("read an image config", &path))?;
        serde_json::from_slice(&bytes).map_err(|e| ImageError::BadJson {
            path,
            member: "config".into(),
            source: e,
        })
    }

    /// Makes a new image: the layers of `parent` (none for scratch), then `layer` (an
    /// uncompressed layer tar, which is moved into the store) if given, under `config` (whose
    /// `rootfs.diff_ids` this sets). Tags it with `tags`. Returns the new image's id.
    pub fn commit_image(
        &self,
        parent: Option<&str>,
        layer: Option<&Path>,
        mut config: serde_json::Value,
        tags: &[String],
    ) -> Result<String, ImageError> {
        let _lock = self.lock()?;
        let repos = self.load()?;
        let parent_layers = match parent {
            Some(p) => {
                let id = find(&repos, p)?;
                repos
                    .images
                    .get(&id)
                    .map(|r| r.layers.clone())
                    .unwrap_or_default()
            }
            None => Vec::new(),
        };
        self.clean_tmp()?;
        let staging = TempDir::new(&self.tmp_dir(), "commit")?;
        let dir = staging.path.join("members");
        let layers_dir = staging.path.join("layers");
        for d in [&dir, &layers_dir] {
            fs::create_dir(d).map_err(store_err("create a staging directory", d))?;
        }
        let mut members: HashMap<String, Member> = HashMap::new();
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        let mut add = |digest: Digest, size: u64, file: PathBuf| {
            members.insert(
                format!("blobs/sha256/{}", digest.hex()),
                Member { file, digest, size },
            );
        };
        for l in &parent_layers {
            let have = self.blob_path(&l.blob);
            let file = dir.join(format!("b{}", l.blob.hex()));
            if !file.exists() {
                fs::hard_link(&have, &file).map_err(store_err("link a parent layer", &have))?;
            }
            let len = fs::metadata(&file)
                .map_err(store_err("link a parent layer", &file))?
                .len();
            let mut head = [0u8; 2];
            let gz = File::open(&file)
                .and_then(|mut f| f.read_exact(&mut head))
                .is_ok()
                && head == [0x1f, 0x8b];
            descs.push(serde_json::json!({
                "mediaType": if gz { MT_OCI_LAYER_GZIP } else { MT_OCI_LAYER },
                "digest": l.blob.to_string(),
                "size": len,
            }));
            diff_ids.push(l.diff_id.to_string());
            add(l.blob.clone(), len, file);
        }
        if let Some(tar) = layer {
            let (d, len) = digest_of_file(tar)?;
            let file = dir.join(format!("b{}", d.hex()));
            fs::rename(tar, &file).map_err(store_err("stage a new layer", tar))?;
            descs.push(serde_json::json!({
                "mediaType": MT_OCI_LAYER,
                "digest": d.to_string(),
                "size": len,
            }));
            diff_ids.push(d.to_string());
            add(d, len, file);
        }
        config["rootfs"] = serde_json::json!({"type": "layers", "diff_ids": diff_ids});
        let mut write = |name: &str, bytes: &[u8]| -> Result<Digest, ImageError> {
            let f = dir.join(name);
            fs::write(&f, bytes).map_err(store_err("write a staging file", &f))?;
            let d = Digest::of(bytes);
            add(d.clone(), bytes.len() as u64, f);
            Ok(d)
        };
        let cfg_bytes = serde_json::to_vec(&config).unwrap_or_default();
        let cfg_digest = write("config", &cfg_bytes)?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": {"mediaType": MT_OCI_CONFIG, "digest": cfg_digest.to_string(), "size": cfg_bytes.len()},
            "layers": descs,
        });
        let m_bytes = serde_json::to_vec(&manifest).unwrap_or_default();
        let m_digest = write("manifest", &m_bytes)?;
        let one = |name: Option<&String>| {
            serde_json::json!({
                "mediaType": MT_OCI_MANIFEST,
                "digest": m_digest.to_string(),
                "size": m_bytes.len(),
                "annotations": name.map_or(serde_json::json!({}), |n| serde_json::json!({"io.containerd.image.name": n})),
            })
        };
        let manifests: Vec<serde_json::Value> = if tags.is_empty() {
            vec![one(None)]
        } else {
            tags.iter().map(|t| one(Some(t))).collect()
        };
        let index = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
        let mut put = |name: &str, bytes: &[u8]| -> Result<(), ImageError> {
            let f = dir.join(name);
            fs::write(&f, bytes).map_err(store_err("write a staging file", &f))?;
            members.insert(
                name.to_string(),
                Member {
                    file: f,
                    digest: Digest::of(bytes),
                    size: bytes.len() as u64,
                },
            );
            Ok(())
        };
        put("index.json", index.to_string().as_bytes())?;
        put("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let staged = Staged::from_members(PathBuf::from("build"), members);
        let images = super::plan_oci(&staged)?;
        self.finish_import(images, &staging, &layers_dir)?;
        Ok(cfg_digest.to_string())
    }
}
