//! Pulling images from a registry (the OCI distribution API): the manifest (an index is
//! resolved to this host's platform), the config and the layers. Each layer is streamed to
//! the store's staging directory, its digest checked on the way, retried from where it broke
//! if the transfer is cut. A blob the store already has is not fetched again. What was
//! fetched then goes through the same verification and commit as an imported OCI layout, so
//! a failed pull leaves no partial image.
//!
//! HTTP is ureq: synchronous like the rest of the store, small, with rustls. Plain HTTP is
//! used only for registries on the local host.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::archive::{Member, Staged};
use super::config::{self, Descriptor, Index, Manifest};
use super::digest::{Digest, HashWriter};
use super::{ImageError, ImageInfo, ImageStore, TempDir};

/// A parsed image reference: `[registry/]repository[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, ImageError> {
        let bad = |reason| ImageError::InvalidReference {
            reference: s.to_string(),
            reason,
        };
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => {
                Digest::parse(d)?;
                (n, Some(d.to_string()))
            }
            None => (s, None),
        };
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (
                &name[..last_slash + i],
                Some(name[last_slash + i + 1..].to_string()),
            ),
            None => (name, None),
        };
        if name.is_empty() || name.split('/').any(str::is_empty) {
            return Err(bad("empty name component"));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => ("docker.io".to_string(), name.to_string()),
        };
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_string()),
            _ => tag,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The name the image is stored under: as written, with `:latest` when neither a tag nor a
    /// digest was given.
    pub fn stored_name(&self, written: &str) -> Option<String> {
        let name = written.split('@').next().unwrap_or(written);
        match (&self.tag, &self.digest) {
            (Some(t), _) if !name.ends_with(&format!(":{t}")) => Some(format!("{name}:{t}")),
            (Some(_), _) => Some(name.to_string()),
            (None, _) => None,
        }
    }

    fn base(&self) -> String {
        base_url(&self.registry, &insecure_registries())
    }
}

/// The registry's URL: HTTPS, except plain HTTP for the local host (`localhost`, `::1`,
/// `127.0.0.0/8`, as Docker's defaults) and for registries listed in `insecure` (`host` or
/// `host:port`).
fn base_url(registry: &str, insecure: &[String]) -> String {
    let host = registry.rsplit_once(':').map_or(registry, |(h, p)| {
        // `[::1]` has colons of its own: only strip a port after the bracket.
        if h.ends_with(']') || !h.contains(':') && !p.contains(']') {
            h
        } else {
            registry
        }
    });
    let local = matches!(host, "localhost" | "[::1]")
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| a.is_loopback());
    if registry == "docker.io" {
        "https://registry-1.docker.io".into()
    } else if local || insecure.iter().any(|i| i == registry || i == host) {
        format!("http://{registry}")
    } else {
        format!("https://{registry}")
    }
}

pub use crate::sys::config_path;

/// The registries to reach over plain HTTP: the config file's `insecure-registries` (as in
/// Docker's daemon.json) and `BERTH_INSECURE_REGISTRIES` (comma-separated).
pub fn insecure_registries() -> Vec<String> {
    let mut out: Vec<String> = std::env::var("BERTH_INSECURE_REGISTRIES")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    out.extend(
        crate::sys::config()
            .get("insecure-registries")
            .and_then(|l| l.as_array())
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string)),
    );
    out
}

/// What a pull did.
#[derive(Debug, Clone, Default)]
pub struct Pulled {
    pub images: Vec<ImageInfo>,
    /// Blobs fetched, and blobs the store already had.
    pub fetched: usize,
    pub reused: usize,
    pub bytes: u64,
}

/// What a pull reports as it goes, for a progress display. Sent from the download threads:
/// the receiver must be `Sync`.
#[derive(Debug, Clone, Copy)]
pub enum PullEvent<'a> {
    /// The store already has this blob: it is not fetched.
    Have { digest: &'a str, size: u64 },
    /// A download is starting (`size` from the manifest).
    Start { digest: &'a str, size: u64 },
    /// `done` bytes of the blob have arrived so far.
    Bytes { digest: &'a str, done: u64 },
    /// The blob is complete and its digest checked.
    Done { digest: &'a str, bytes: u64 },
    /// Every blob is here: the layers are being verified and unpacked.
    Unpacking,
}

/// The authentication challenge of a 401 answer (`WWW-Authenticate`), or "".
fn challenge(resp: &ureq::http::Response<ureq::Body>) -> String {
    resp.headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn reg_err(r: &str, message: impl Into<String>) -> ImageError {
    ImageError::Registry {
        reference: r.to_string(),
        message: message.into(),
    }
}

/// The docker config file berth reads credentials from and `berth login` writes:
/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, as Docker's.
pub fn docker_config() -> PathBuf {
    match std::env::var_os("DOCKER_CONFIG") {
        Some(d) => PathBuf::from(d).join("config.json"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".docker/config.json"),
    }
}

/// The `user:password` stored for `registry` (its `auths` entry), if any.
pub fn credentials(registry: &str) -> Option<String> {
    use base64::Engine;
    let text = fs::read_to_string(docker_config()).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let auths = v.get("auths")?.as_object()?;
    let keys = [
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
        if registry == "docker.io" {
            "https://index.docker.io/v1/".into()
        } else {
            String::new()
        },
    ];
    let entry = keys.iter().find_map(|k| auths.get(k))?;
    let auth = entry.get("auth")?.as_str()?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(auth)
        .ok()?;
    String::from_utf8(raw).ok()
}

/// Checks `user:password` against `registry` and records it in the docker config file.
pub fn login(registry: &str, user: &str, password: &str) -> Result<PathBuf, ImageError> {
    use base64::Engine;
    let r = Reference::parse(&format!("{registry}/x"))?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let resp = agent
        .get(&format!("{}/v2/", r.base()))
        .header("Authorization", &format!("Basic {basic}"))
        .call()
        .map_err(|e| reg_err(registry, format!("cannot reach the registry: {e}")))?;
    match resp.status().as_u16() {
        200 => {}
        401 => {
            // A token registry: the credentials are checked when the token is asked for.
            let challenge = challenge(&resp);
            if !challenge.starts_with("Bearer ") {
                return Err(reg_err(
                    registry,
                    "login refused: wrong user name or password",
                ));
            }
            let c = Client::new(registry, r.clone());
            c.token(&challenge, Some(&format!("{user}:{password}")))
                .map_err(|_| reg_err(registry, "login refused: wrong user name or password"))?;
        }
        s => return Err(reg_err(registry, format!("the registry answered {s}"))),
    }
    let path = docker_config();
    let mut v: serde_json::Value = fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    if !v.get("auths").is_some_and(|a| a.is_object()) {
        v["auths"] = serde_json::json!({});
    }
    v["auths"][registry] = serde_json::json!({ "auth": basic });
    write_config(&path, &v)?;
    Ok(path)
}

/// Forgets the credentials of `registry`. Returns whether there were any.
pub fn logout(registry: &str) -> Result<bool, ImageError> {
    let path = docker_config();
    let Some(mut v) = fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    else {
        return Ok(false);
    };
    let had = v
        .get_mut("auths")
        .and_then(|a| a.as_object_mut())
        .is_some_and(|a| a.remove(registry).is_some());
    if had {
        write_config(&path, &v)?;
    }
    Ok(had)
}

fn write_config(path: &Path, v: &serde_json::Value) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| ImageError::Store {
        op: "write the docker config file",
        path: path.to_path_buf(),
        source,
    };
    if let Some(d) = path.parent() {
        fs::create_dir_all(d).map_err(err)?;
    }
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(v).unwrap_or_default()).map_err(err)?;
    // Credentials: readable by their owner only.
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

#[derive(Clone)]
struct Client {
    agent: ureq::Agent,
    written: String,
    r: Reference,
    token: Option<String>,
}

impl Client {
    fn new(written: &str, r: Reference) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .build()
            .into();
        Client {
            agent,
            written: written.to_string(),
            r,
            token: None,
        }
    }

    fn url(&self, kind: &str, what: &str) -> String {
        format!("{}/v2/{}/{kind}/{what}", self.r.base(), self.r.repository)
    }

    /// GET `url`, answering a bearer challenge once with an anonymous token.
    fn get(
        &mut self,
        url: &str,
        accept: Option<&str>,
        range: Option<u64>,
    ) -> Result<ureq::http::Response<ureq::Body>, ImageError> {
        for attempt in 0..2 {
            let mut req = self.agent.get(url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(from) = range {
                req = req.header("Range", &format!("bytes={from}-"));
            }
            if let Some(t) = &self.token {
                req = req.header("Authorization", t);
            }
            let resp = req.call().map_err(|e| {
                reg_err(
                    &self.written,
                    format!("cannot reach the registry {}: {e}", self.r.registry),
                )
            })?;
            if resp.status() == 401 && attempt == 0 {
                let challenge = challenge(&resp);
                let creds = credentials(&self.r.registry);
                self.token = Some(self.token(&challenge, creds.as_deref())?);
                continue;
            }
            return Ok(resp);
        }
        Err(reg_err(
            &self.written,
            "the registry refused the pull: authentication required",
        ))
    }

    /// The `Authorization` value that answers `challenge`: basic credentials, or a bearer
    /// token from the registry's token service (anonymous, or with the credentials).
    fn token(&self, challenge: &str, creds: Option<&str>) -> Result<String, ImageError> {
        use base64::Engine;
        let basic = creds.map(|c| base64::engine::general_purpose::STANDARD.encode(c));
        if challenge.starts_with("Basic") {
            return match basic {
                Some(b) => Ok(format!("Basic {b}")),
                None => Err(reg_err(
                    &self.written,
                    format!(
                        "the registry requires a login: run `berth login {}`",
                        self.r.registry
                    ),
                )),
            };
        }
        let Some(params) = challenge.strip_prefix("Bearer ") else {
            return Err(reg_err(
                &self.written,
                "the registry asks for an unknown kind of authentication",
            ));
        };
        let mut realm = String::new();
        let mut query = Vec::new();
        for part in params.split(',') {
            if let Some((k, v)) = part.trim().split_once('=') {
                let v = v.trim_matches('"');
                if k == "realm" {
                    realm = v.to_string();
                } else {
                    query.push(format!("{k}={v}"));
                }
            }
        }
        let url = format!("{realm}?{}", query.join("&"));
        let mut req = self.agent.get(&url);
        if let Some(b) = &basic {
            req = req.header("Authorization", &format!("Basic {b}"));
        }
        let mut resp = req
            .call()
            .map_err(|e| reg_err(&self.written, format!("token service {realm}: {e}")))?;
        if resp.status() != 200 {
            return Err(reg_err(
                &self.written,
                format!(
                    "the registry refused an anonymous token ({})",
                    resp.status()
                ),
            ));
        }
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| reg_err(&self.written, format!("token service: {e}")))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| reg_err(&self.written, format!("token service: {e}")))?;
        v.get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .map(|t| format!("Bearer {t}"))
            .ok_or_else(|| reg_err(&self.written, "the token service gave no token"))
    }

    /// A manifest or index by tag or digest: its bytes and media type.
    fn manifest(&mut self, what: &str) -> Result<(Vec<u8>, String), ImageError> {
        let url = self.url("manifests", what);
        let mut resp = self.get(&url, Some(ACCEPT), None)?;
        match resp.status().as_u16() {
            200 => {}
            404 => {
                // The registry's error code tells a missing repository from a missing tag.
                let body = resp.body_mut().read_to_string().unwrap_or_default();
                let tags = format!("{}/v2/{}/tags/list", self.r.base(), self.r.repository);
                let no_repo = body.contains("NAME_UNKNOWN")
                    || self.get(&tags, None, None).is_ok_and(|r| r.status() == 404);
                let message = if no_repo {
                    format!(
                        "no image {} in the registry {}",
                        self.r.repository, self.r.registry
                    )
                } else if what.starts_with("sha256:") {
                    format!(
                        "no manifest {what} for {} in {}",
                        self.r.repository, self.r.registry
                    )
                } else {
                    format!(
                        "no tag `{what}` for {} in {}",
                        self.r.repository, self.r.registry
                    )
                };
                return Err(reg_err(&self.written, message));
            }
            s => {
                return Err(reg_err(
                    &self.written,
                    format!("the registry answered {s} for the manifest"),
                ));
            }
        }
        let mt = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .to_string();
        let body = resp
            .body_mut()
            .with_config()
            .limit(16 << 20)
            .read_to_vec()
            .map_err(|e| reg_err(&self.written, format!("reading the manifest: {e}")))?;
        if what.starts_with("sha256:") && Digest::of(&body).to_string() != what {
            return Err(reg_err(
                &self.written,
                format!("the manifest does not match its digest {what}"),
            ));
        }
        Ok((body, mt))
    }

    /// Streams blob `d` to `dest`, checking its digest; a cut transfer resumes where it broke.
    fn blob(
        &mut self,
        d: &Digest,
        size: u64,
        dest: &Path,
        progress: &(dyn Fn(PullEvent<'_>) + Sync),
    ) -> Result<u64, ImageError> {
        let shown = d.to_string();
        let url = self.url("blobs", &d.to_string());
        let file = File::create(dest).map_err(|source| ImageError::Store {
            op: "create a download file",
            path: dest.to_path_buf(),
            source,
        })?;
        let mut w = HashWriter::new(io::BufWriter::with_capacity(1 << 20, file));
        let mut have = 0u64;
        let mut tries = 0;
        loop {
            let resp = self.get(&url, None, (have > 0).then_some(have))?;
            let status = resp.status().as_u16();
            if status == 404 {
                return Err(reg_err(
                    &self.written,
                    format!("blob {d} is missing from the registry"),
                ));
            }
            if !(status == 200 || status == 206 && have > 0) {
                return Err(reg_err(
                    &self.written,
                    format!("the registry answered {status} for blob {d}"),
                ));
            }
            if status == 200 && have > 0 {
                // The registry ignored the range: start the file again.
                return Err(reg_err(
                    &self.written,
                    format!("blob {d}: the transfer broke and the registry cannot resume it"),
                ));
            }
            let mut body = resp.into_body();
            let mut reader = body.with_config().limit(u64::MAX).reader();
            let mut buf = vec![0u8; 256 << 10];
            let broke = loop {
                match reader.read(&mut buf) {
                    Ok(0) => break None,
                    Ok(n) => {
                        w.write_all(&buf[..n]).map_err(|source| ImageError::Store {
                            op: "write a download",
                            path: dest.to_path_buf(),
                            source,
                        })?;
                        have += n as u64;
                        progress(PullEvent::Bytes {
                            digest: &shown,
                            done: have,
                        });
                    }
                    Err(e) => break Some(e),
                }
            };
            match broke {
                None if have >= size => break,
                None | Some(_) if tries < 5 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(200 * tries));
                }
                Some(e) => return Err(reg_err(&self.written, format!("blob {d}: {e}"))),
                None => {
                    return Err(reg_err(
                        &self.written,
                        format!("blob {d}: the transfer ended after {have} of {size} bytes"),
                    ));
                }
            }
        }
        let (w, got, n) = w.finish();
        w.into_inner()
            .map_err(|e| e.into_error())
            .map_err(|source| ImageError::Store {
                op: "write a download",
                path: dest.to_path_buf(),
                source,
            })?;
        if got != *d {
            let _ = fs::remove_file(dest);
            return Err(reg_err(
                &self.written,
                format!("blob {d} does not match its digest (got {got}): refused, nothing stored"),
            ));
        }
        Ok(n)
    }
}

/// Whether `pull_policy` asks for a pull now: `always`; `missing` (the default, also
/// `if_not_present`) when the store lacks the image; `daily`, `weekly` or `every_<duration>`
/// when it lacks it or its last pull is older than that; `never` and `build` never.
pub fn pull_due(policy: &str, have: bool, last: Option<u64>, now: u64) -> Result<bool, String> {
    let age = |secs: u64| !have || last.is_none_or(|t| now.saturating_sub(t) >= secs);
    Ok(match policy {
        "always" => true,
        "never" | "build" => false,
        "missing" | "if_not_present" => !have,
        "daily" => age(86_400),
        "weekly" => age(7 * 86_400),
        p => match p.strip_prefix("every_") {
            Some(d) => age(crate::spec::units::parse_duration(d)?.as_std().as_secs()),
            None => return Err(format!("unknown pull_policy `{p}`")),
        },
    })
}

fn pulls_file(store: &ImageStore) -> PathBuf {
    store.dir().join("pulled.json")
}

/// When `reference` was last pulled (seconds since the epoch), for the timed policies.
pub fn last_pull(store: &ImageStore, reference: &str) -> Option<u64> {
    let t = fs::read_to_string(pulls_file(store)).ok()?;
    let m: HashMap<String, u64> = serde_json::from_str(&t).ok()?;
    m.get(reference).copied()
}

fn record_pull(store: &ImageStore, reference: &str) {
    let mut m: HashMap<String, u64> = fs::read_to_string(pulls_file(store))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    m.insert(reference.to_string(), now);
    let _ = crate::sys::atomic_write(
        &pulls_file(store),
        &serde_json::to_vec(&m).unwrap_or_default(),
    );
}

fn member(file: PathBuf, bytes_or_len: (Digest, u64)) -> Member {
    Member {
        file,
        digest: bytes_or_len.0,
        size: bytes_or_len.1,
    }
}

impl ImageStore {
    /// Pulls `reference` from its registry into the store, telling `progress` how it goes.
    pub fn pull(
        &self,
        reference: &str,
        progress: &(dyn Fn(PullEvent<'_>) + Sync),
    ) -> Result<Pulled, ImageError> {
        let r = Reference::parse(reference)?;
        let stored = r.stored_name(reference);
        let mut c = Client::new(reference, r.clone());
        let what = r
            .digest
            .clone()
            .or(r.tag.clone())
            .unwrap_or_else(|| "latest".into());
        let (mut body, mut mt) = c.manifest(&what)?;
        let doc: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| reg_err(reference, format!("the manifest is not JSON: {e}")))?;
        if mt == config::MT_OCI_INDEX
            || mt == config::MT_DOCKER_LIST
            || doc.get("manifests").is_some()
        {
            let index: Index = serde_json::from_value(doc)
                .map_err(|e| reg_err(reference, format!("the index: {e}")))?;
            let chosen: &Descriptor = index
                .manifests
                .iter()
                .find(|d| {
                    d.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == config::host_arch())
                })
                .ok_or_else(|| {
                    reg_err(
                        reference,
                        format!("no image for linux/{} in its index", config::host_arch()),
                    )
                })?;
            let d = chosen.digest.clone();
            (body, mt) = c.manifest(&d)?;
        }
        let manifest: Manifest = serde_json::from_slice(&body)
            .map_err(|e| reg_err(reference, format!("the manifest: {e}")))?;
        if mt.is_empty() {
            mt = manifest
                .media_type
                .clone()
                .unwrap_or_else(|| config::MT_OCI_MANIFEST.into());
        }

        let _lock = self.lock()?;
        self.clean_tmp()?;
        let staging = TempDir::new(&self.tmp_dir(), "pull")?;
        let dir = staging.path.join("members");
        let layers_dir = staging.path.join("layers");
        for d in [&dir, &layers_dir] {
            fs::create_dir(d).map_err(|source| ImageError::Store {
                op: "create a staging directory",
                path: d.clone(),
                source,
            })?;
        }
        let mut members: HashMap<String, Member> = HashMap::new();
        let write = |name: &str, bytes: &[u8]| -> Result<Member, ImageError> {
            let f = dir.join(format!("m{}", name.replace('/', "_")));
            fs::write(&f, bytes).map_err(|source| ImageError::Store {
                op: "write a staging file",
                path: f.clone(),
                source,
            })?;
            Ok(member(f, (Digest::of(bytes), bytes.len() as u64)))
        };
        let mdigest = Digest::of(&body);
        members.insert(
            format!("blobs/sha256/{}", mdigest.hex()),
            write("manifest", &body)?,
        );
        let mut annotations = serde_json::Map::new();
        if let Some(n) = &stored {
            annotations.insert("io.containerd.image.name".into(), n.clone().into());
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": mt, "digest": mdigest.to_string(), "size": body.len(), "annotations": annotations}],
        });
        members.insert(
            "index.json".into(),
            write("index", index.to_string().as_bytes())?,
        );
        members.insert(
            "oci-layout".into(),
            write("layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?,
        );

        let mut out = Pulled::default();
        // Blobs the store has are linked in; the others are fetched at once, a connection
        // each (a registry serves layers in parallel; one stream at a time left the link idle
        // between them).
        let mut fetch: Vec<(Digest, u64, PathBuf, String)> = Vec::new();
        for desc in std::iter::once(&manifest.config).chain(manifest.layers.iter()) {
            let d = Digest::parse(&desc.digest)?;
            let size = u64::try_from(desc.size).unwrap_or(0);
            let file = dir.join(format!("b{}", d.hex()));
            let key = format!("blobs/sha256/{}", d.hex());
            if members.contains_key(&key) {
                continue;
            }
            let have = self.blob_path(&d);
            if have.is_file() && fs::hard_link(&have, &file).is_ok() {
                out.reused += 1;
                progress(PullEvent::Have {
                    digest: &desc.digest,
                    size,
                });
            } else {
                fetch.push((d.clone(), size, file.clone(), desc.digest.clone()));
            }
            members.insert(key, member(file, (d, size)));
        }
        let results: Vec<Result<(String, u64), ImageError>> = std::thread::scope(|sc| {
            let handles: Vec<_> = fetch
                .iter()
                .map(|(d, size, file, shown)| {
                    let mut c = c.clone();
                    sc.spawn(move || {
                        progress(PullEvent::Start {
                            digest: shown,
                            size: *size,
                        });
                        let n = c.blob(d, *size, file, progress)?;
                        progress(PullEvent::Done {
                            digest: shown,
                            bytes: n,
                        });
                        Ok((shown.clone(), n))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(reg_err(reference, "a download thread panicked")))
                })
                .collect()
        });
        for r in results {
            let (_, n) = r?;
            out.fetched += 1;
            out.bytes += n;
        }
        progress(PullEvent::Unpacking);
        let staged = Staged::from_members(PathBuf::from(reference), members);
        let images = super::plan_oci(&staged)?;
        out.images = self.finish_import(images, &staging, &layers_dir)?;
        record_pull(self, reference);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policies_decide_as_compose_defines_them() {
        let day = 86_400;
        assert_eq!(pull_due("missing", true, None, 0), Ok(false));
        assert_eq!(pull_due("missing", false, None, 0), Ok(true));
        assert_eq!(pull_due("always", true, Some(0), 0), Ok(true));
        assert_eq!(pull_due("never", false, None, 0), Ok(false));
        assert_eq!(pull_due("daily", true, Some(10), 10 + day - 1), Ok(false));
        assert_eq!(pull_due("daily", true, Some(10), 10 + day), Ok(true));
        assert_eq!(pull_due("weekly", true, Some(0), 6 * day), Ok(false));
        assert_eq!(pull_due("every_12h", true, Some(0), 12 * 3600), Ok(true));
        assert_eq!(pull_due("every_12h", true, Some(0), 3600), Ok(false));
        assert_eq!(
            pull_due("daily", true, None, 5),
            Ok(true),
            "never pulled: pull"
        );
        assert!(pull_due("sometimes", true, None, 0).is_err());
    }

    #[test]
    fn references_get_docker_defaults() {
        let r = Reference::parse("redis:7").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("docker.io", "library/redis", Some("7"))
        );
        let r = Reference::parse("127.0.0.1:5000/team/bb").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "team/bb", Some("latest"))
        );
        assert_eq!(r.base(), "http://127.0.0.1:5000");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("ghcr.io/x/y@{d}")).unwrap();
        assert_eq!(
            (r.tag.clone(), r.digest.as_deref()),
            (None, Some(d.as_str()))
        );
        assert_eq!(r.base(), "https://ghcr.io");
        let none: &[String] = &[];
        assert_eq!(base_url("127.0.0.2:5000", none), "http://127.0.0.2:5000");
        assert_eq!(base_url("[::1]:5000", none), "http://[::1]:5000");
        assert_eq!(base_url("localhost", none), "http://localhost");
        assert_eq!(base_url("reg.lan:5000", none), "https://reg.lan:5000");
        let listed = ["reg.lan:5000".to_string(), "other.lan".to_string()];
        assert_eq!(base_url("reg.lan:5000", &listed), "http://reg.lan:5000");
        assert_eq!(base_url("reg.lan:5001", &listed), "https://reg.lan:5001");
        assert_eq!(base_url("other.lan:443", &listed), "http://other.lan:443");
        assert_eq!(base_url("127.example.com", none), "https://127.example.com");
        assert_eq!(r.stored_name(&format!("ghcr.io/x/y@{d}")), None);
        assert_eq!(
            Reference::parse("bb").unwrap().stored_name("bb").as_deref(),
            Some("bb:latest")
        );
    }
}
