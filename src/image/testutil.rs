//! Builders of image tarballs for tests (berth's own and the runtime's): layers, docker-save
//! and OCI-layout tarballs, and a minimal busybox image from the host's static busybox.
//! Test support only: these panic on I/O errors instead of returning them.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::digest::Digest;

/// Fixed, so that the same test image always has the same digests.
const MTIME: u64 = 1_700_000_000;

/// Builds one layer tar in memory.
pub struct LayerBuilder {
    b: tar::Builder<Vec<u8>>,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h
}

impl LayerBuilder {
    pub fn new() -> Self {
        LayerBuilder {
            b: tar::Builder::new(Vec::new()),
        }
    }

    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        self.b
            .append_data(&mut h, path, std::io::empty())
            .expect("append a directory");
        self
    }

    pub fn file(self, path: &str, content: &[u8], mode: u32) -> Self {
        self.file_owned(path, content, mode, 0, 0)
    }

    pub fn file_owned(mut self, path: &str, content: &[u8], mode: u32, uid: u64, gid: u64) -> Self {
        let mut h = header(tar::EntryType::Regular, mode, content.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.b
            .append_data(&mut h, path, content)
            .expect("append a file");
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        self.b
            .append_link(&mut h, path, target)
            .expect("append a symlink");
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = header(tar::EntryType::Link, 0o644, 0);
        self.b
            .append_link(&mut h, path, target)
            .expect("append a hardlink");
        self
    }

    pub fn fifo(mut self, path: &str) -> Self {
        let mut h = header(tar::EntryType::Fifo, 0o644, 0);
        self.b
            .append_data(&mut h, path, std::io::empty())
            .expect("append a fifo");
        self
    }

    /// A regular file preceded by a PAX header carrying `SCHILY.xattr.<name>` records.
    pub fn file_with_xattrs(
        mut self,
        path: &str,
        content: &[u8],
        xattrs: &[(&str, &[u8])],
    ) -> Self {
        let keys: Vec<String> = xattrs
            .iter()
            .map(|(k, _)| format!("SCHILY.xattr.{k}"))
            .collect();
        self.b
            .append_pax_extensions(
                keys.iter()
                    .map(String::as_str)
                    .zip(xattrs.iter().map(|(_, v)| *v)),
            )
            .expect("append a PAX header");
        self.file(path, content, 0o644)
    }

    /// A symlink preceded by a PAX header carrying `SCHILY.xattr.<name>` records.
    pub fn symlink_with_xattrs(
        mut self,
        path: &str,
        target: &str,
        xattrs: &[(&str, &[u8])],
    ) -> Self {
        let keys: Vec<String> = xattrs
            .iter()
            .map(|(k, _)| format!("SCHILY.xattr.{k}"))
            .collect();
        self.b
            .append_pax_extensions(
                keys.iter()
                    .map(String::as_str)
                    .zip(xattrs.iter().map(|(_, v)| *v)),
            )
            .expect("append a PAX header");
        self.symlink(path, target)
    }

    /// A character (`block == false`) or block device node.
    pub fn device(mut self, path: &str, block: bool, major: u32, minor: u32) -> Self {
        let kind = if block {
            tar::EntryType::Block
        } else {
            tar::EntryType::Char
        };
        let mut h = header(kind, 0o666, 0);
        h.set_device_major(major).expect("device major");
        h.set_device_minor(minor).expect("device minor");
        self.b
            .append_data(&mut h, path, std::io::empty())
            .expect("append a device");
        self
    }

    /// Deletes `path` of the layers below (`dir/.wh.name`).
    pub fn whiteout(self, path: &str) -> Self {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let wh = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&wh, b"", 0o600)
    }

    /// Hides the contents of `dir` in the layers below.
    pub fn opaque(self, dir: &str) -> Self {
        self.file(&format!("{dir}/.wh..wh..opq"), b"", 0o600)
    }

    /// An entry with a name the tar crate would refuse to write (`../evil`, `/abs`): the bytes
    /// go straight into the header, as a hostile tool would write them.
    pub fn raw(
        mut self,
        name: &[u8],
        kind: tar::EntryType,
        link: Option<&[u8]>,
        content: &[u8],
    ) -> Self {
        let mut h = header(kind, 0o644, content.len() as u64);
        {
            let gnu = h.as_gnu_mut().expect("a gnu header");
            gnu.name = [0; 100];
            gnu.name[..name.len()].copy_from_slice(name);
            if let Some(link) = link {
                gnu.linkname = [0; 100];
                gnu.linkname[..link.len()].copy_from_slice(link);
            }
        }
        h.set_cksum();
        self.b.append(&h, content).expect("append a raw entry");
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().expect("finish the layer")
    }
}

pub fn sha256(bytes: &[u8]) -> String {
    Digest::of(bytes).to_string()
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

/// An image to write into a test tarball.
#[derive(Clone, Debug, Default)]
pub struct TestImage {
    pub tags: Vec<String>,
    /// Uncompressed layer tars, bottom first.
    pub layers: Vec<Vec<u8>>,
    /// Store the layers gzip-compressed in the tarball.
    pub gzip_layers: bool,
    /// The `config` object of the image config (`Cmd`, `Env`, ...).
    pub config: Value,
}

impl TestImage {
    /// The image config JSON, with `rootfs.diff_ids` from the layers.
    pub fn config_json(&self) -> Vec<u8> {
        let diff_ids: Vec<String> = self.layers.iter().map(|l| sha256(l)).collect();
        let cfg = json!({
            "created": "2023-11-14T22:13:20Z",
            "architecture": super::config::host_arch(),
            "os": "linux",
            "config": self.config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        serde_json::to_vec(&cfg).expect("serialize a config")
    }

    /// The layer blobs as they go into the tarball (gzip or not).
    pub fn blobs(&self) -> Vec<Vec<u8>> {
        self.layers
            .iter()
            .map(|l| if self.gzip_layers { gzip(l) } else { l.clone() })
            .collect()
    }

    /// The image id the store will give it.
    pub fn id(&self) -> String {
        sha256(&self.config_json())
    }
}

/// The members of a tarball, written in order.
#[derive(Default)]
pub struct Tarball {
    members: Vec<(String, Member)>,
}

enum Member {
    File(Vec<u8>),
    Symlink(String),
}

impl Tarball {
    pub fn file(&mut self, path: &str, content: Vec<u8>) {
        if !self.members.iter().any(|(p, _)| p == path) {
            self.members.push((path.to_string(), Member::File(content)));
        }
    }

    /// Replaces the content of the file member `path` (to corrupt it).
    pub fn replace(&mut self, path: &str, content: Vec<u8>) {
        let m = self
            .members
            .iter_mut()
            .find(|(p, _)| p == path)
            .unwrap_or_else(|| panic!("no member {path}"));
        m.1 = Member::File(content);
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.members
            .push((path.to_string(), Member::Symlink(target.to_string())));
    }

    pub fn write(&self, path: &Path, gzip_outer: bool) {
        let mut b = tar::Builder::new(Vec::new());
        let mut dirs: Vec<String> = Vec::new();
        for (p, m) in &self.members {
            if let Some((d, _)) = p.rsplit_once('/') {
                let mut acc = String::new();
                for c in d.split('/') {
                    acc = if acc.is_empty() {
                        c.to_string()
                    } else {
                        format!("{acc}/{c}")
                    };
                    if !dirs.contains(&acc) {
                        dirs.push(acc.clone());
                        let mut h = header(tar::EntryType::Directory, 0o755, 0);
                        b.append_data(&mut h, &acc, std::io::empty())
                            .expect("append a directory");
                    }
                }
            }
            match m {
                Member::File(c) => {
                    let mut h = header(tar::EntryType::Regular, 0o644, c.len() as u64);
                    b.append_data(&mut h, p, c.as_slice())
                        .expect("append a member");
                }
                Member::Symlink(t) => {
                    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                    b.append_link(&mut h, p, t).expect("append a member link");
                }
            }
        }
        let bytes = b.into_inner().expect("finish the tarball");
        let bytes = if gzip_outer { gzip(&bytes) } else { bytes };
        std::fs::write(path, bytes).expect("write the tarball");
    }
}

/// How a docker-save tarball lays out its layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DockerLayout {
    /// docker < 25: `<id>/layer.tar`, `<config-hex>.json`.
    Legacy,
    /// docker >= 25: `blobs/sha256/<hex>`, referenced directly from `manifest.json`.
    Blobs,
    /// docker >= 25 as read by older tools: `manifest.json` names `<id>/layer.tar`, a symlink
    /// to `../blobs/sha256/<hex>`.
    BlobsViaSymlinks,
}

/// The members of a docker-save tarball of `images`.
pub fn docker_save_members(images: &[TestImage], layout: DockerLayout) -> Tarball {
    let mut t = Tarball::default();
    let mut manifest = Vec::new();
    for img in images {
        let cfg = img.config_json();
        let cfg_hex = sha256(&cfg)[7..].to_string();
        let cfg_path = match layout {
            DockerLayout::Legacy => format!("{cfg_hex}.json"),
            _ => format!("blobs/sha256/{cfg_hex}"),
        };
        t.file(&cfg_path, cfg);
        let mut layer_paths = Vec::new();
        for blob in img.blobs() {
            let hex = sha256(&blob)[7..].to_string();
            let p = match layout {
                DockerLayout::Legacy => {
                    t.file(&format!("{hex}/VERSION"), b"1.0".to_vec());
                    t.file(&format!("{hex}/layer.tar"), blob);
                    format!("{hex}/layer.tar")
                }
                DockerLayout::Blobs => {
                    t.file(&format!("blobs/sha256/{hex}"), blob);
                    format!("blobs/sha256/{hex}")
                }
                DockerLayout::BlobsViaSymlinks => {
                    t.file(&format!("blobs/sha256/{hex}"), blob);
                    t.symlink(
                        &format!("{hex}/layer.tar"),
                        &format!("../blobs/sha256/{hex}"),
                    );
                    format!("{hex}/layer.tar")
                }
            };
            layer_paths.push(p);
        }
        manifest.push(json!({"Config": cfg_path, "RepoTags": img.tags, "Layers": layer_paths}));
    }
    t.file(
        "manifest.json",
        serde_json::to_vec(&manifest).expect("serialize manifest.json"),
    );
    t
}

/// Writes a docker-save tarball of `images` to `path`.
pub fn docker_save(path: &Path, images: &[TestImage], layout: DockerLayout, gzip_outer: bool) {
    docker_save_members(images, layout).write(path, gzip_outer);
}

/// The members of an OCI image layout of `images`. With `nested`, each image sits behind a
/// multi-platform index that also lists an image of another architecture (absent from the
/// tarball: picking it would fail the import).
pub fn oci_layout_members(images: &[TestImage], nested: bool) -> Tarball {
    let mut t = Tarball::default();
    t.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec());
    let mut index = Vec::new();
    for img in images {
        let cfg = img.config_json();
        let mut layers = Vec::new();
        for blob in img.blobs() {
            let d = sha256(&blob);
            layers.push(json!({
                "mediaType": if img.gzip_layers { "application/vnd.oci.image.layer.v1.tar+gzip" } else { "application/vnd.oci.image.layer.v1.tar" },
                "digest": d, "size": blob.len(),
            }));
            t.file(&format!("blobs/sha256/{}", &d[7..]), blob);
        }
        let cfg_d = sha256(&cfg);
        let cfg_len = cfg.len();
        t.file(&format!("blobs/sha256/{}", &cfg_d[7..]), cfg);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_d, "size": cfg_len},
            "layers": layers,
        }))
        .expect("serialize a manifest");
        let m_d = sha256(&manifest);
        let m_len = manifest.len();
        t.file(&format!("blobs/sha256/{}", &m_d[7..]), manifest);
        let (top_d, top_len, top_mt) = if nested {
            let other_arch = if super::config::host_arch() == "arm64" {
                "amd64"
            } else {
                "arm64"
            };
            let nested_index = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [
                    {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                     "digest": format!("sha256:{}", "0".repeat(64)), "size": 1,
                     "platform": {"os": "linux", "architecture": other_arch}},
                    {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                     "digest": m_d, "size": m_len,
                     "platform": {"os": "linux", "architecture": super::config::host_arch()}},
                ],
            }))
            .expect("serialize an index");
            let d = sha256(&nested_index);
            let len = nested_index.len();
            t.file(&format!("blobs/sha256/{}", &d[7..]), nested_index);
            (d, len, "application/vnd.oci.image.index.v1+json")
        } else {
            (m_d, m_len, "application/vnd.oci.image.manifest.v1+json")
        };
        if img.tags.is_empty() {
            index.push(json!({"mediaType": top_mt, "digest": top_d, "size": top_len}));
        }
        for tag in &img.tags {
            index.push(json!({
                "mediaType": top_mt, "digest": top_d, "size": top_len,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }));
        }
    }
    t.file(
        "index.json",
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": index}))
            .expect("serialize index.json"),
    );
    t
}

/// Writes an OCI-layout tarball of `images` to `path`.
pub fn oci_layout(path: &Path, images: &[TestImage], nested: bool, gzip_outer: bool) {
    oci_layout_members(images, nested).write(path, gzip_outer);
}

pub const BUSYBOX: &str = "/bin/busybox";

/// Whether the host has a static busybox to build test images from (Debian:
/// `apt-get install busybox-static`).
pub fn busybox_available() -> bool {
    let ok = Path::new(BUSYBOX).is_file();
    // In CI a missing busybox would turn every container test into a silent pass.
    assert!(
        ok || std::env::var_os("CI").is_none(),
        "CI must install busybox-static (.ci/run)"
    );
    ok
}

/// The layer of the busybox test image: `/bin/busybox` and a symlink to it for each of its
/// applets, a root and a nobody user, and the directories a container expects.
pub fn busybox_layer() -> Vec<u8> {
    let bin = std::fs::read(BUSYBOX)
        .unwrap_or_else(|e| panic!("{BUSYBOX}: {e} (install Debian's busybox-static)"));
    let list = std::process::Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .unwrap_or_else(|e| panic!("{BUSYBOX} --list: {e}"));
    let mut l = LayerBuilder::new()
        .dir("bin", 0o755)
        .dir("dev", 0o755)
        .dir("etc", 0o755)
        .dir("home", 0o755)
        .dir("proc", 0o555)
        .dir("root", 0o700)
        .dir("sys", 0o555)
        .dir("tmp", 0o1777)
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .dir("usr/sbin", 0o755)
        .dir("sbin", 0o755)
        .dir("var", 0o755)
        .dir("var/run", 0o755)
        .file("bin/busybox", &bin, 0o755)
        .file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
            0o644,
        )
        .file("etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644)
        .file("etc/hostname", b"busybox\n", 0o644)
        .symlink("usr/bin/env", "../../bin/busybox");
    let applets = String::from_utf8_lossy(&list.stdout).into_owned();
    let mut names: Vec<&str> = applets
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .collect();
    // A busybox built without `--list` still gets the applets tests rely on.
    for must in [
        "sh", "ls", "cat", "echo", "sleep", "true", "false", "ps", "id", "hostname", "mount",
        "env", "kill", "mkdir", "rm", "touch", "wget", "nc", "grep", "head", "wc", "test",
    ] {
        if !names.contains(&must) {
            names.push(must);
        }
    }
    names.sort_unstable();
    names.dedup();
    for a in names {
        l = l.symlink(&format!("bin/{a}"), "busybox");
    }
    l.finish()
}

/// The busybox test image, tagged `busybox:latest`, with `Cmd ["sh"]`.
pub fn busybox_image() -> TestImage {
    TestImage {
        tags: vec!["busybox:latest".into()],
        layers: vec![busybox_layer()],
        gzip_layers: false,
        config: json!({
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sh"],
        }),
    }
}

/// Writes a docker-save tarball of a minimal busybox image (`busybox:latest`) into `dir` and
/// returns its path. Needs `/bin/busybox` (Debian's busybox-static); panics without it.
pub fn busybox_docker_save(dir: &Path) -> PathBuf {
    let path = dir.join("busybox.tar");
    docker_save(&path, &[busybox_image()], DockerLayout::Legacy, false);
    path
}

/// Writes `bytes` to `path`, creating or truncating it.
pub fn write_file(path: &Path, bytes: &[u8]) {
    File::create(path)
        .and_then(|mut f| f.write_all(bytes))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Writes an OCI image layout directory at `dir` whose index.json names (`ref`) a
/// two-platform image index: `host` for this host's architecture and `other` for another,
/// both present (for `skopeo copy --all oci:DIR:REF docker://...`).
pub fn two_platform_layout(dir: &Path, host: &TestImage, other: &TestImage, r#ref: &str) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir blobs");
    let put = |bytes: &[u8]| -> (String, usize) {
        let d = sha256(bytes);
        write_file(&blobs.join(&d[7..]), bytes);
        (d, bytes.len())
    };
    let manifest = |img: &TestImage| -> (String, usize) {
        let cfg = img.config_json();
        let (cfg_d, cfg_len) = put(&cfg);
        let layers: Vec<Value> = img
            .blobs()
            .iter()
            .map(|b| {
                let (d, len) = put(b);
                json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": len})
            })
            .collect();
        let m = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_d, "size": cfg_len},
            "layers": layers,
        }))
        .expect("serialize a manifest");
        put(&m)
    };
    let other_arch = if super::config::host_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    let (hd, hl) = manifest(host);
    let (od, ol) = manifest(other);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": od, "size": ol,
             "platform": {"os": "linux", "architecture": other_arch}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": hd, "size": hl,
             "platform": {"os": "linux", "architecture": super::config::host_arch()}},
        ],
    }))
    .expect("serialize an index");
    let (id, il) = put(&index);
    write_file(
        &dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    );
    write_file(
        &dir.join("index.json"),
        &serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": id, "size": il,
             "annotations": {"org.opencontainers.image.ref.name": r#ref}},
        ]}))
        .expect("serialize index.json"),
    );
}
