//! Running a Dockerfile: each stage from its base, each step a new image in the store.
//!
//! - `RUN` is a berth container of the image so far (same runtime, namespaces, seccomp and
//!   cgroup as any service), and its layer is what it wrote: its overlayfs upper directory,
//!   turned into an OCI layer by [`super::layer`].
//! - `COPY`/`ADD` write into an overlay of the image so far, mounted for the step under the
//!   build's directory, so existing directories keep their owner and mode and the layer is
//!   again the upper directory. Every path inside the image is resolved with
//!   openat2(RESOLVE_IN_ROOT) and written through file descriptors: a symlink in the image
//!   (`/app -> /etc`) cannot send a copy to the host (the same defence as the runtime's mounts,
//!   CVE-2021-30465). Sources are resolved inside the context and never followed out of it.
//! - Metadata steps (`ENV`, `CMD`, ...) make a new config over the same layers.
//! - The cache: each step's result is recorded under a key made of its parent image, the
//!   instruction after expansion, the build args in scope and, for copies, the content of
//!   what is copied. A step whose key is recorded and whose image is still in the store is
//!   not run again.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rustix::fs::{Mode, OFlags};
use sha2::{Digest as _, Sha256};

use super::dockerfile::{
    self, Command, Dockerfile, Instruction, MountKind, RunMount, Step, expand,
};
use crate::runtime::ContainerSpec;
use crate::runtime::Engine;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Parse(#[from] dockerfile::ParseError),
    #[error("{file}:{line}: {message}")]
    Step {
        file: String,
        line: usize,
        message: String,
    },
    #[error(
        "{file}:{line}: `{command}` exited with status {status}{}",
        if output.is_empty() { String::new() } else { format!("; its output:\n{output}") }
    )]
    RunFailed {
        file: String,
        line: usize,
        command: String,
        status: i32,
        output: String,
    },
    #[error("build: {0}")]
    Other(String),
}

/// What to build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    pub context: PathBuf,
    /// The Dockerfile's name for messages, and its text.
    pub dockerfile_name: String,
    pub dockerfile: String,
    pub args: BTreeMap<String, String>,
    pub target: Option<String>,
    pub tags: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// `network_mode` of the `RUN` containers: `host` (the default, so package managers reach
    /// their mirrors as under `docker build`) or `none`.
    pub network: Option<String>,
    pub no_cache: bool,
    /// `build.pull`: pull the `FROM` images even when the store has them.
    pub pull: bool,
    /// `build.shm_size`: the size of `/dev/shm` in the `RUN` containers.
    pub shm_size: Option<u64>,
    /// `build.extra_hosts` (`host=address`): entries in the `RUN` containers' `/etc/hosts`.
    pub extra_hosts: Vec<String>,
}

/// A line of progress: the step, and whether it was cached or how long it ran.
#[derive(Debug, Clone)]
pub enum BuildEvent {
    Step {
        n: usize,
        total: usize,
        text: String,
    },
    Cached {
        n: usize,
    },
    Done {
        n: usize,
        secs: f64,
    },
    Output {
        n: usize,
        line: String,
    },
}

/// What a build made.
#[derive(Debug, Clone)]
pub struct Built {
    pub id: String,
    pub steps: usize,
    pub cached: usize,
}

struct StageState {
    /// The image so far; `None` for scratch with nothing done yet.
    image: Option<String>,
    config: serde_json::Value,
    args: BTreeMap<String, String>,
    shell: Vec<String>,
    /// A `CMD` was given in this stage (an `ENTRYPOINT` after it keeps it).
    cmd_set: bool,
}

impl StageState {
    fn env(&self) -> Vec<(String, String)> {
        self.config["config"]["Env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                e.as_str()?
                    .split_once('=')
                    .map(|(k, v)| (k.into(), v.into()))
            })
            .collect()
    }

    fn var(&self, k: &str) -> Option<String> {
        self.env()
            .into_iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v)
            .or_else(|| self.args.get(k).cloned())
    }

    fn set_env(&mut self, k: &str, v: &str) {
        let mut env: Vec<serde_json::Value> = self
            .env()
            .into_iter()
            .filter(|(n, _)| n != k)
            .map(|(n, v)| format!("{n}={v}").into())
            .collect();
        env.push(format!("{k}={v}").into());
        self.config["config"]["Env"] = env.into();
    }

    fn workdir(&self) -> String {
        self.config["config"]["WorkingDir"]
            .as_str()
            .filter(|w| !w.is_empty())
            .unwrap_or("/")
            .to_string()
    }
}

/// The build cache: step key -> image id, in `<root>/build/cache.json`.
struct Cache {
    path: PathBuf,
    map: BTreeMap<String, String>,
}

impl Cache {
    fn open(root: &Path) -> Cache {
        let path = root.join("build/cache.json");
        let map = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Cache { path, map }
    }

    fn save(&self) {
        if let Some(d) = self.path.parent() {
            let _ = fs::create_dir_all(d);
        }
        let _ = crate::state::atomic_write(
            &self.path,
            &serde_json::to_vec(&self.map).unwrap_or_default(),
        );
    }
}

fn hex(h: Sha256) -> String {
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The build's scratch directory, removed (and anything mounted in it detached) on drop.
struct Scratch {
    dir: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// An overlay of an image's layers with a fresh upper directory, mounted on the host for one
/// step; unmounted when dropped.
struct Overlay {
    merged: PathBuf,
    upper: PathBuf,
}

impl Overlay {
    fn mount(dir: &Path, layers: &[PathBuf]) -> std::io::Result<Overlay> {
        let (upper, work, merged, empty) = (
            dir.join("upper"),
            dir.join("work"),
            dir.join("merged"),
            dir.join("empty"),
        );
        for d in [&upper, &work, &merged, &empty] {
            fs::create_dir_all(d)?;
        }
        let mut lowers: Vec<String> = layers
            .iter()
            .rev()
            .map(|p| p.display().to_string())
            .collect();
        if lowers.is_empty() {
            lowers.push(empty.display().to_string());
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},redirect_dir=off,metacopy=off",
            lowers.join(":"),
            upper.display(),
            work.display()
        );
        nix::mount::mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(opts.as_str()),
        )
        .map_err(std::io::Error::from)?;
        Ok(Overlay { merged, upper })
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.merged, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Opens directory `rel` inside `root`, creating what is missing (root-owned, 0755, as
/// Docker's COPY and WORKDIR do). Symlinks resolve inside the root.
pub(crate) fn mkdir_in_root(root: &OwnedFd, rel: &str) -> std::io::Result<OwnedFd> {
    let mut cur = crate::sys::open_in_root(root, "", OFlags::DIRECTORY | OFlags::PATH)?;
    let mut sofar = String::new();
    for comp in rel.split('/').filter(|c| !c.is_empty() && *c != ".") {
        sofar.push('/');
        sofar.push_str(comp);
        let open = |p: &str| crate::sys::open_in_root(root, p, OFlags::DIRECTORY);
        cur = match open(&sofar) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => {
                rustix::fs::mkdirat(&cur, comp, Mode::from_raw_mode(0o755))?;
                open(&sofar)?
            }
            Err(e) => return Err(e.into()),
        };
    }
    // A real directory fd (not O_PATH) for the *at calls that follow.
    rustix::fs::openat(
        &cur,
        ".",
        OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(Into::into)
}

/// Owner for copied files: `--chown=uid[:gid]`, names looked up in the image's files.
fn parse_chown(spec: Option<&str>, root: &Path) -> Result<Option<(u32, u32)>, String> {
    let Some(spec) = spec else { return Ok(None) };
    let (u, g) = spec.split_once(':').unwrap_or((spec, spec));
    let lookup = |name: &str, file: &str| -> Option<u32> {
        if let Ok(n) = name.parse() {
            return Some(n);
        }
        let text = fs::read_to_string(root.join(file)).ok()?;
        text.lines()
            .find(|l| l.split(':').next() == Some(name))
            .and_then(|l| l.split(':').nth(2)?.parse().ok())
    };
    let uid = lookup(u, "etc/passwd").ok_or(format!("--chown: no user `{u}` in the image"))?;
    let gid = if spec.contains(':') {
        lookup(g, "etc/group").ok_or(format!("--chown: no group `{g}` in the image"))?
    } else {
        uid
    };
    Ok(Some((uid, gid)))
}

/// Copies `src` (a host path already checked to be inside its source tree) to `name` in
/// directory `dir` (an fd inside the image), recursively, never following symlinks.
pub(crate) fn copy_entry(
    src: &Path,
    dir: &OwnedFd,
    name: &str,
    owner: Option<(u32, u32)>,
    chmod: Option<u32>,
) -> std::io::Result<()> {
    let md = fs::symlink_metadata(src)?;
    let ft = md.file_type();
    let (uid, gid) = owner.unwrap_or((0, 0));
    if ft.is_symlink() {
        let target = fs::read_link(src)?;
        let _ = rustix::fs::unlinkat(dir, name, rustix::fs::AtFlags::empty());
        rustix::fs::symlinkat(&target, dir, name)?;
        rustix::fs::chownat(
            dir,
            name,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )?;
        return Ok(());
    }
    let mode = chmod.unwrap_or(md.permissions().mode() & 0o7777);
    if ft.is_dir() {
        match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(mode)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        let sub = rustix::fs::openat(
            dir,
            name,
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        rustix::fs::fchmod(&sub, Mode::from_raw_mode(mode))?;
        rustix::fs::fchown(
            &sub,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )?;
        let mut names: Vec<_> = fs::read_dir(src)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for n in names {
            copy_entry(&src.join(&n), &sub, &n.to_string_lossy(), owner, chmod)?;
        }
        return Ok(());
    }
    if !ft.is_file() {
        return Err(std::io::Error::other(format!(
            "{}: only files, directories and symlinks can be copied",
            src.display()
        )));
    }
    let _ = rustix::fs::unlinkat(dir, name, rustix::fs::AtFlags::empty());
    let mut out = crate::support::create_new_at(dir, name)?;
    std::io::copy(&mut File::open(src)?, &mut out)?;
    rustix::fs::fchown(
        out.as_fd(),
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )?;
    rustix::fs::fchmod(out.as_fd(), Mode::from_raw_mode(mode))?;
    Ok(())
}

/// `.dockerignore` patterns: `#` comments, `!` exceptions, `*`, `?` and `**`; the last
/// matching pattern decides.
#[derive(Debug, Clone)]
pub struct Ignore {
    patterns: Vec<(bool, Vec<String>)>,
}

impl Ignore {
    pub fn load(context: &Path) -> Ignore {
        let text = fs::read_to_string(context.join(".dockerignore")).unwrap_or_default();
        Ignore::parse(&text)
    }

    pub fn parse(text: &str) -> Ignore {
        let patterns = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (neg, p) = match l.strip_prefix('!') {
                    Some(p) => (true, p.trim()),
                    None => (false, l),
                };
                let parts = p
                    .trim_start_matches('/')
                    .trim_end_matches('/')
                    .split('/')
                    .filter(|c| !c.is_empty() && *c != ".")
                    .map(str::to_string)
                    .collect();
                (neg, parts)
            })
            .collect();
        Ignore { patterns }
    }

    /// Whether `rel` (a path in the context, `/`-separated) is left out. A path under an
    /// ignored directory is ignored too.
    pub fn ignored(&self, rel: &str) -> bool {
        let parts: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
        let mut out = false;
        for (neg, pat) in &self.patterns {
            let hit = (1..=parts.len()).any(|n| glob_parts(pat, &parts[..n]));
            if hit {
                out = !neg;
            }
        }
        out
    }
}

impl Ignore {
    /// Whether an ignored directory `rel` may still hold something a `!` pattern takes back
    /// (`data` then `!data/keep.txt`): such a directory is walked, as Docker does.
    pub fn reopened_below(&self, rel: &str) -> bool {
        let parts: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
        self.patterns
            .iter()
            .any(|(neg, pat)| *neg && prefix_match(pat, &parts))
    }
}

/// Whether `pat` can match a path that goes on below `path`.
fn prefix_match(pat: &[String], path: &[&str]) -> bool {
    match (pat.first(), path.first()) {
        (Some(p), _) if p == "**" => true,
        (Some(_), None) => true,
        (Some(p), Some(s)) => {
            glob(p.as_bytes(), s.as_bytes()) && prefix_match(&pat[1..], &path[1..])
        }
        (None, _) => false,
    }
}

fn glob_parts(pat: &[String], path: &[&str]) -> bool {
    match (pat.first(), path.first()) {
        (None, None) => true,
        (Some(p), _) if p == "**" => {
            glob_parts(&pat[1..], path) || (!path.is_empty() && glob_parts(pat, &path[1..]))
        }
        (Some(p), Some(s)) => glob(p.as_bytes(), s.as_bytes()) && glob_parts(&pat[1..], &path[1..]),
        _ => false,
    }
}

/// `*` and `?` within one path component.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a == b => glob(&p[1..], &s[1..]),
        _ => false,
    }
}

/// The context files a COPY source names (a path or a glob), as (host path, path in the
/// context). Refuses sources outside the context.
fn sources(context: &Path, ignore: &Ignore, src: &str) -> Result<Vec<(PathBuf, String)>, String> {
    let clean: Vec<&str> = src
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if clean.contains(&"..") {
        return Err(format!("`{src}` is outside the build context"));
    }
    let mut found: Vec<(PathBuf, String)> = vec![(context.to_path_buf(), String::new())];
    for comp in &clean {
        let mut next = Vec::new();
        for (dir, rel) in &found {
            let is_glob = comp.contains(['*', '?']);
            if !is_glob {
                next.push((dir.join(comp), join(rel, comp)));
                continue;
            }
            let Ok(rd) = fs::read_dir(dir) else { continue };
            let mut names: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for n in names {
                if glob(comp.as_bytes(), n.as_bytes()) {
                    next.push((dir.join(&n), join(rel, &n)));
                }
            }
        }
        found = next;
    }
    // Never through a symlink of the context that leads out of it.
    let mut out = Vec::new();
    for (p, rel) in found {
        if !rel.is_empty() && ignore.ignored(&rel) {
            continue;
        }
        let Ok(ctx) = fs::canonicalize(context) else {
            continue;
        };
        // The context itself (`COPY . /app`), or the real directory an item sits in.
        let real = if rel.is_empty() {
            ctx.clone()
        } else {
            let Ok(r) = fs::canonicalize(p.parent().unwrap_or(context)) else {
                continue;
            };
            r
        };
        if !real.starts_with(&ctx) {
            return Err(format!("`{src}` leads outside the build context"));
        }
        if fs::symlink_metadata(&p).is_ok() {
            out.push((p, rel));
        }
    }
    if out.is_empty() {
        return Err(format!(
            "COPY source `{src}` not found in the build context{}",
            if clean.iter().any(|c| c.contains(['*', '?'])) {
                " (no file matches)"
            } else {
                ""
            }
        ));
    }
    Ok(out)
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}/{b}")
    }
}

/// Hashes what would be copied: names, modes, link targets and contents, skipping ignored
/// files. Two contexts with the same result hash the same.
fn hash_tree(h: &mut Sha256, path: &Path, rel: &str, ignore: &Ignore) -> std::io::Result<()> {
    let md = fs::symlink_metadata(path)?;
    if !rel.is_empty() && ignore.ignored(rel) && (!md.is_dir() || !ignore.reopened_below(rel)) {
        return Ok(());
    }
    h.update(rel.as_bytes());
    h.update(md.mode().to_le_bytes());
    if md.file_type().is_symlink() {
        h.update(fs::read_link(path)?.as_os_str().as_encoded_bytes());
    } else if md.is_dir() {
        let mut names: Vec<_> = fs::read_dir(path)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for n in names {
            hash_tree(h, &path.join(&n), &join(rel, &n.to_string_lossy()), ignore)?;
        }
    } else {
        let mut f = File::open(path)?;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(())
}

/// Copies a directory tree of the context, skipping ignored entries, for a directory source.
fn copy_filtered(
    src: &Path,
    rel: &str,
    dir: &OwnedFd,
    ignore: &Ignore,
    owner: Option<(u32, u32)>,
    chmod: Option<u32>,
) -> std::io::Result<()> {
    let mut names: Vec<_> = fs::read_dir(src)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for n in names {
        let name = n.to_string_lossy().into_owned();
        let r = join(rel, &name);
        let p = src.join(&n);
        let md = fs::symlink_metadata(&p)?;
        if ignore.ignored(&r) && (!md.is_dir() || !ignore.reopened_below(&r)) {
            continue;
        }
        if md.is_dir() {
            let mode = chmod.unwrap_or(md.permissions().mode() & 0o7777);
            match rustix::fs::mkdirat(dir, name.as_str(), Mode::from_raw_mode(mode)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            let sub = rustix::fs::openat(
                dir,
                name.as_str(),
                OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let (uid, gid) = owner.unwrap_or((0, 0));
            rustix::fs::fchown(
                &sub,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )?;
            copy_filtered(&p, &r, &sub, ignore, owner, chmod)?;
        } else {
            copy_entry(&p, dir, &name, owner, chmod)?;
        }
    }
    Ok(())
}

/// Runs the build.
pub fn build(
    rt: &Arc<impl Engine>,
    root: &Path,
    opts: &BuildOptions,
    progress: &dyn Fn(BuildEvent),
) -> Result<Built, BuildError> {
    let file = opts.dockerfile_name.clone();
    let df = dockerfile::parse(&file, &opts.dockerfile)?;
    let target = df.target(opts.target.as_deref()).ok_or_else(|| {
        BuildError::Other(format!(
            "{file}: no stage named `{}` (the stages: {})",
            opts.target.as_deref().unwrap_or(""),
            df.stages
                .iter()
                .filter_map(|s| s.name.clone())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    let tk = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BuildError::Other(format!("starting the async runtime: {e}")))?;
    let scratch = Scratch {
        dir: root
            .join("build/tmp")
            .join(format!("b{}", std::process::id())),
    };
    detach_stale_mounts(&root.join("build/tmp"));
    remove_build_leftovers(rt, &tk, root, None);
    // And this build's own, however it ends.
    let _leftovers = Leftovers { rt, tk: &tk, root };
    let _ = fs::remove_dir_all(&scratch.dir);
    fs::create_dir_all(&scratch.dir)
        .map_err(|e| BuildError::Other(format!("{}: {e}", scratch.dir.display())))?;
    let mut cache = Cache::open(root);
    let ignore = Ignore::load(&opts.context);
    let mut done_stages: HashMap<usize, String> = HashMap::new();
    let mut n = 0;
    let mut cached = 0;
    let global = |k: &str| -> Option<String> {
        df.global_args
            .iter()
            .find(|(n, _)| n == k)
            .and_then(|(n, d)| opts.args.get(n).cloned().or(d.clone()))
    };
    let needed = needed_stages(&df, target, &global);
    let total: usize = needed.iter().map(|&i| df.stages[i].steps.len() + 1).sum();
    let mut last = String::new();
    for &si in &needed {
        let stage = &df.stages[si];
        n += 1;
        let base = expand(&stage.base, &global);
        progress(BuildEvent::Step {
            n,
            total,
            text: format!("FROM {base}"),
        });
        let step_err = |line: usize, message: String| BuildError::Step {
            file: file.clone(),
            line,
            message,
        };
        let from_stage = df.stages[..si].iter().position(|s| {
            s.name
                .as_deref()
                .is_some_and(|nm| nm.eq_ignore_ascii_case(&base))
        });
        let image = if base == "scratch" {
            None
        } else if let Some(i) = from_stage {
            Some(done_stages.get(&i).cloned().ok_or_else(|| {
                step_err(stage.line, format!("FROM {base}: that stage was not built"))
            })?)
        } else if base == "host" {
            // The host's OS files under the build's own layers: the image has no layer of
            // them, only a label that tells the runtime to put them under its layers.
            None
        } else {
            if opts.pull {
                rt.images()
                    .pull(&base, &|_| {})
                    .map_err(|e| step_err(stage.line, format!("FROM {base}: {e}")))?;
            }
            let id = match rt.images().resolve(&base) {
                Ok(img) => img.id,
                Err(_) => {
                    rt.images().pull(&base, &|_| {}).map_err(|e| {
                        step_err(
                            stage.line,
                            format!("FROM {base}: not in the store, and {e}"),
                        )
                    })?;
                    rt.images()
                        .resolve(&base)
                        .map_err(|e| step_err(stage.line, format!("FROM {base}: {e}")))?
                        .id
                }
            };
            Some(id)
        };
        let mut config = rt
            .images()
            .config_document(image.as_deref())
            .map_err(|e| step_err(stage.line, e.to_string()))?;
        if base == "host" && from_stage.is_none() {
            config["config"]["Labels"][crate::image::host::HOST_BASE_LABEL] = "host".into();
        }
        let mut st = StageState {
            image,
            config,
            args: BTreeMap::new(),
            shell: vec!["/bin/sh".into(), "-c".into()],
            cmd_set: false,
        };
        if let Some(sh) = st.config["config"]["Shell"].as_array() {
            let v: Vec<String> = sh
                .iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect();
            if !v.is_empty() {
                st.shell = v;
            }
        }
        for step in &stage.steps {
            n += 1;
            progress(BuildEvent::Step {
                n,
                total,
                text: step.text.clone(),
            });
            let t0 = Instant::now();
            let hit = run_step(
                rt,
                &tk,
                opts,
                &df,
                &done_stages,
                &mut st,
                step,
                &scratch.dir,
                &ignore,
                &mut cache,
                n,
                progress,
            )?;
            match hit {
                Outcome::Cached => {
                    cached += 1;
                    progress(BuildEvent::Cached { n });
                }
                Outcome::Ran => progress(BuildEvent::Done {
                    n,
                    secs: t0.elapsed().as_secs_f64(),
                }),
                Outcome::Meta => push_history(&mut st.config, &step.text, true),
            }
        }
        // A stage that changed nothing still needs an image of its own for its config.
        let id = commit_config(rt, &mut st, &[])?;
        done_stages.insert(si, id.clone());
        last = id;
    }
    cache.save();
    // The final image: the build's labels, and its tags.
    let stage_state_config = rt
        .images()
        .config_document(Some(&last))
        .map_err(|e| BuildError::Other(e.to_string()))?;
    let mut cfg = stage_state_config;
    for (k, v) in &opts.labels {
        cfg["config"]["Labels"][k] = v.clone().into();
    }
    let id = rt
        .images()
        .commit_image(Some(&last), None, cfg, &opts.tags)
        .map_err(|e| BuildError::Other(e.to_string()))?;
    Ok(Built {
        id,
        steps: n,
        cached,
    })
}

/// The pid of the build a `_build<pid>` project name belongs to.
fn build_pid(project: &str) -> Option<i32> {
    project.strip_prefix("_build")?.parse().ok()
}

/// Removes the `RUN` containers and their anonymous volumes (an image's `VOLUME`s) that a
/// killed build left (its pid is gone), and those of this build (`mine`) once it is done.
fn remove_build_leftovers(
    rt: &Arc<impl Engine>,
    tk: &tokio::runtime::Runtime,
    root: &Path,
    mine: Option<i32>,
) {
    let gone = |pid: i32| mine == Some(pid) || !Path::new(&format!("/proc/{pid}")).exists();
    if let Ok(rd) = fs::read_dir(root.join("containers")) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some((project, _)) = name.split_once("-step")
                && build_pid(project).is_some_and(gone)
            {
                let _ = tk.block_on(rt.remove(&name));
            }
        }
    }
    for v in crate::disk::volumes(root) {
        if build_pid(&v.project).is_some_and(gone) {
            let _ = crate::disk::remove_volume(root, &v.name);
        }
    }
}

struct Leftovers<'a, R: Engine> {
    rt: &'a Arc<R>,
    tk: &'a tokio::runtime::Runtime,
    root: &'a Path,
}

impl<R: Engine> Drop for Leftovers<'_, R> {
    fn drop(&mut self) {
        let me = i32::try_from(std::process::id()).ok();
        remove_build_leftovers(self.rt, self.tk, self.root, me);
    }
}

/// Detaches what a build that was killed (SIGKILL: no destructor ran) left mounted under
/// `dir`, deepest first, so its scratch directory can be removed.
fn detach_stale_mounts(dir: &Path) {
    let Ok(mi) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.display().to_string();
    let mut points: Vec<String> = mi
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        // mountinfo escapes space, tab, newline and backslash as octal.
        .map(|p| {
            p.replace("\\040", " ")
                .replace("\\011", "\t")
                .replace("\\012", "\n")
                .replace("\\134", "\\")
        })
        .filter(|p| {
            // Only a dead build's: `b<PID>` of a running build (another berth build on this
            // state root) is left alone.
            let Some(rest) = p.strip_prefix(&format!("{prefix}/b")) else {
                return false;
            };
            let pid = rest.split('/').next().unwrap_or("");
            pid.parse::<u32>().is_ok_and(|n| {
                n == std::process::id() || !Path::new(&format!("/proc/{n}")).exists()
            })
        })
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = nix::mount::umount2(Path::new(&p), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The platform ARGs Docker defines for every build (`ARG TARGETARCH` takes its value from
/// here); berth builds for the host's platform.
fn predefined(k: &str) -> Option<String> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    Some(match k {
        "TARGETPLATFORM" | "BUILDPLATFORM" => format!("linux/{arch}"),
        "TARGETOS" | "BUILDOS" => "linux".into(),
        "TARGETARCH" | "BUILDARCH" => arch.into(),
        "TARGETVARIANT" | "BUILDVARIANT" => String::new(),
        _ => return None,
    })
}

/// The stages the target needs (`FROM` an earlier stage, `COPY --from` one), in order.
fn needed_stages(
    df: &Dockerfile,
    target: usize,
    global: &dyn Fn(&str) -> Option<String>,
) -> Vec<usize> {
    let mut need = vec![false; df.stages.len()];
    let by_name = |name: &str| -> Option<usize> {
        df.stages
            .iter()
            .position(|s| {
                s.name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
            })
            .or_else(|| name.parse::<usize>().ok().filter(|i| *i < df.stages.len()))
    };
    let mut todo = vec![target];
    while let Some(i) = todo.pop() {
        if need[i] {
            continue;
        }
        need[i] = true;
        let s = &df.stages[i];
        // `FROM base-${V}` names a stage once the global ARGs are in.
        if let Some(j) = by_name(&expand(&s.base, global)).filter(|j| *j < i) {
            todo.push(j);
        }
        for step in &s.steps {
            let froms: Vec<&String> = match &step.instruction {
                Instruction::Copy(c) => c.from.iter().collect(),
                Instruction::Run { mounts, .. } => {
                    mounts.iter().filter_map(|m| m.from.as_ref()).collect()
                }
                _ => Vec::new(),
            };
            for f in froms {
                if let Some(j) = by_name(f).filter(|j| *j < i) {
                    todo.push(j);
                }
            }
        }
    }
    (0..df.stages.len()).filter(|i| need[*i]).collect()
}

/// Records a step in the image's `history`, as `docker history` shows it: one entry per
/// instruction, `empty_layer` for those that only change the config. No time, so an
/// unchanged rebuild gives the same image.
fn push_history(config: &mut serde_json::Value, text: &str, empty: bool) {
    let mut entry = serde_json::json!({"created_by": text, "comment": "berth build"});
    if empty {
        entry["empty_layer"] = true.into();
    }
    match config["history"].as_array_mut() {
        Some(h) => h.push(entry),
        None => config["history"] = serde_json::json!([entry]),
    }
}

/// In an overlay of an image `FROM host`: the host's symlinked OS directories, where the
/// image has nothing there (as a RUN step's container sees them).
fn host_symlinks_in(merged: &Path) -> std::io::Result<()> {
    for (name, target) in crate::image::host::symlinked_dirs() {
        let p = merged.join(name);
        if fs::symlink_metadata(&p).is_err() {
            std::os::unix::fs::symlink(&target, &p)?;
        }
        // And where it points (`usr/bin`), which the layers alone may not have.
        let rel = target.to_string_lossy().trim_start_matches('/').to_string();
        if !rel.split('/').any(|c| c == "..") {
            let root = rustix::fs::open(
                merged,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            mkdir_in_root(&root, &rel)?;
        }
    }
    Ok(())
}

/// Whether the stage is built `FROM host` (or from an image that was).
fn host_based(st: &StageState) -> bool {
    st.config["config"]["Labels"][crate::image::host::HOST_BASE_LABEL] == "host"
}

/// Commits the stage's config over its image (no new layer).
fn commit_config(
    rt: &Arc<impl Engine>,
    st: &mut StageState,
    tags: &[String],
) -> Result<String, BuildError> {
    let id = rt
        .images()
        .commit_image(st.image.as_deref(), None, st.config.clone(), tags)
        .map_err(|e| BuildError::Other(e.to_string()))?;
    st.image = Some(id.clone());
    Ok(id)
}

fn argv(st: &StageState, c: &Command) -> Vec<String> {
    match c {
        Command::Exec(v) => v.clone(),
        Command::Shell(s) => st.shell.iter().cloned().chain([s.clone()]).collect(),
    }
}

fn cmd_json(st: &StageState, c: &Command) -> serde_json::Value {
    argv(st, c).into()
}

/// What became of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// A config change only: nothing to run or cache.
    Meta,
    Cached,
    Ran,
}

/// Runs one step, or finds it in the cache.
#[allow(clippy::too_many_arguments)]
fn run_step(
    rt: &Arc<impl Engine>,
    tk: &tokio::runtime::Runtime,
    opts: &BuildOptions,
    df: &Dockerfile,
    done_stages: &HashMap<usize, String>,
    st: &mut StageState,
    step: &Step,
    scratch: &Path,
    ignore: &Ignore,
    cache: &mut Cache,
    n: usize,
    progress: &dyn Fn(BuildEvent),
) -> Result<Outcome, BuildError> {
    let file = &opts.dockerfile_name;
    let err = |message: String| BuildError::Step {
        file: file.clone(),
        line: step.line,
        message,
    };
    // Variables as they are before this step (all pairs of one ENV see the same values).
    let mut snapshot: HashMap<String, String> = st.args.clone().into_iter().collect();
    snapshot.extend(st.env());
    let vars = |k: &str| snapshot.get(k).cloned();
    let x = |s: &str| expand(s, &vars);
    // Metadata steps: a new config, cheap, no cache needed.
    match &step.instruction {
        Instruction::Env(pairs) => {
            let pairs: Vec<(String, String)> =
                pairs.iter().map(|(k, v)| (k.clone(), x(v))).collect();
            for (k, v) in pairs {
                st.set_env(&k, &v);
            }
            return Ok(Outcome::Meta);
        }
        Instruction::Arg(a) => {
            for (k, d) in a {
                let v = opts
                    .args
                    .get(k)
                    .cloned()
                    .or_else(|| d.as_ref().map(|d| x(d)))
                    .or_else(|| {
                        df.global_args
                            .iter()
                            .find(|(n, _)| n == k)
                            .and_then(|(n, d)| opts.args.get(n).cloned().or(d.clone()))
                    })
                    .or_else(|| predefined(k));
                if let Some(v) = v {
                    st.args.insert(k.clone(), v);
                }
            }
            return Ok(Outcome::Meta);
        }
        Instruction::Workdir(w) => {
            let w = x(w);
            let abs = if w.starts_with('/') {
                w
            } else {
                format!("{}/{}", st.workdir().trim_end_matches('/'), w)
            };
            st.config["config"]["WorkingDir"] = abs.into();
            // Docker creates the directory: a small layer, made below like a copy's.
        }
        Instruction::User(u) => {
            st.config["config"]["User"] = x(u).into();
            return Ok(Outcome::Meta);
        }
        Instruction::Label(pairs) => {
            for (k, v) in pairs {
                st.config["config"]["Labels"][x(k)] = x(v).into();
            }
            return Ok(Outcome::Meta);
        }
        Instruction::Expose(ports) => {
            for p in ports {
                let p = x(p);
                let p = if p.contains('/') {
                    p
                } else {
                    format!("{p}/tcp")
                };
                st.config["config"]["ExposedPorts"][p] = serde_json::json!({});
            }
            return Ok(Outcome::Meta);
        }
        Instruction::Volume(v) => {
            for p in v {
                st.config["config"]["Volumes"][x(p)] = serde_json::json!({});
            }
            return Ok(Outcome::Meta);
        }
        Instruction::Cmd(c) => {
            let v = cmd_json(st, c);
            st.config["config"]["Cmd"] = v;
            st.cmd_set = true;
            return Ok(Outcome::Meta);
        }
        Instruction::Entrypoint(c) => {
            let v = cmd_json(st, c);
            st.config["config"]["Entrypoint"] = v;
            // Docker: a new ENTRYPOINT resets an inherited CMD, not one set in this stage.
            if !st.cmd_set {
                st.config["config"]["Cmd"] = serde_json::Value::Null;
            }
            return Ok(Outcome::Meta);
        }
        Instruction::Shell(s) => {
            st.shell = s.clone();
            st.config["config"]["Shell"] = s.clone().into();
            return Ok(Outcome::Meta);
        }
        Instruction::StopSignal(s) => {
            st.config["config"]["StopSignal"] = x(s).into();
            return Ok(Outcome::Meta);
        }
        Instruction::Onbuild(t) => {
            let mut list = st.config["config"]["OnBuild"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            list.push(t.clone().into());
            st.config["config"]["OnBuild"] = list.into();
            return Ok(Outcome::Meta);
        }
        Instruction::Healthcheck(h) => {
            let nanos = |d: &Option<String>| -> Result<Option<u64>, BuildError> {
                match d {
                    None => Ok(None),
                    Some(d) => crate::spec::units::parse_duration(d)
                        .map(|d| Some(d.0))
                        .map_err(|e| err(format!("HEALTHCHECK: `{d}`: {e}"))),
                }
            };
            let v = match h {
                None => serde_json::json!({"Test": ["NONE"]}),
                Some(h) => {
                    let test: Vec<String> = match &h.cmd {
                        Command::Exec(v) => std::iter::once("CMD".to_string())
                            .chain(v.clone())
                            .collect(),
                        Command::Shell(s) => vec!["CMD-SHELL".into(), s.clone()],
                    };
                    let retries = match &h.retries {
                        None => None,
                        Some(r) => Some(r.parse::<u64>().map_err(|_| {
                            err(format!("HEALTHCHECK: --retries={r}: expected a number"))
                        })?),
                    };
                    serde_json::json!({
                        "Test": test,
                        "Interval": nanos(&h.interval)?,
                        "Timeout": nanos(&h.timeout)?,
                        "StartPeriod": nanos(&h.start_period)?,
                        "StartInterval": nanos(&h.start_interval)?,
                        "Retries": retries,
                    })
                }
            };
            st.config["config"]["Healthcheck"] = v;
            return Ok(Outcome::Meta);
        }
        Instruction::Run { .. } | Instruction::Copy(_) => {}
    }

    // Steps that make a layer: first the cache.
    let mut key = Sha256::new();
    key.update(st.image.as_deref().unwrap_or("scratch").as_bytes());
    key.update(serde_json::to_vec(&st.config["config"]).unwrap_or_default());
    key.update(step.text.as_bytes());
    for (k, v) in &st.args {
        key.update(format!("\0{k}={v}").as_bytes());
    }
    if let Instruction::Copy(c) = &step.instruction {
        match &c.from {
            Some(f) => key.update(
                format!(
                    "\0from={}",
                    stage_image(df, done_stages, f)
                        .or_else(|| rt.images().resolve(f).ok().map(|i| i.id))
                        .unwrap_or_else(|| f.clone())
                )
                .as_bytes(),
            ),
            None => {
                for s in &c.sources {
                    let s = x(s);
                    if c.add && is_url(&s) {
                        // What the URL gives now decides (it is fetched once per build; the
                        // copy step takes the same file).
                        let file = fetch_url(&s, c.checksum.as_deref(), scratch).map_err(err)?;
                        let (d, _) = crate::image::digest_of_path(&file)
                            .map_err(|e| err(format!("{s}: {e}")))?;
                        key.update(format!("\0url={s}\0{d}").as_bytes());
                        continue;
                    }
                    for (p, rel) in sources(&opts.context, ignore, &s).map_err(err)? {
                        hash_tree(&mut key, &p, &rel, ignore)
                            .map_err(|e| err(format!("reading {}: {e}", p.display())))?;
                    }
                }
            }
        }
        for h in &c.heredocs {
            key.update(h.body.as_bytes());
        }
    }
    if let Instruction::Run {
        heredocs, mounts, ..
    } = &step.instruction
    {
        for h in heredocs {
            key.update(h.body.as_bytes());
        }
        // What a bind mount shows is an input of the step, as a copied file is; a cache
        // mount's content is not (it is a cache).
        for m in mounts {
            key.update(format!("\0mount={m:?}").as_bytes());
            if m.kind != MountKind::Bind {
                continue;
            }
            match m.from.as_deref().map(&x) {
                Some(f) => key.update(
                    stage_image(df, done_stages, &f)
                        .or_else(|| rt.images().resolve(&f).ok().map(|i| i.id))
                        .unwrap_or(f)
                        .as_bytes(),
                ),
                None => {
                    let src = m.source.as_deref().unwrap_or(".");
                    for (p, rel) in sources(&opts.context, ignore, &x(src)).map_err(err)? {
                        hash_tree(&mut key, &p, &rel, ignore)
                            .map_err(|e| err(format!("reading {}: {e}", p.display())))?;
                    }
                }
            }
        }
    }
    let key = hex(key);
    if !opts.no_cache
        && let Some(id) = cache.map.get(&key)
        && let Ok(cfg) = rt.images().config_document(Some(id))
    {
        st.image = Some(id.clone());
        st.config = cfg;
        return Ok(Outcome::Cached);
    }
    // The parent must be an image in the store for a container or an overlay of it.
    let parent = match &st.image {
        Some(_) => Some(commit_config(rt, st, &[])?),
        // `FROM host` with nothing done yet: an image of no layers, marked host-based.
        None if host_based(st) => Some(commit_config(rt, st, &[])?),
        None => None,
    };
    let layer_tar = scratch.join(format!("layer{n}.tar"));
    match &step.instruction {
        Instruction::Run {
            command,
            network,
            mounts,
            heredocs,
        } => {
            let Some(parent) = parent.as_deref() else {
                return Err(err(
                    "RUN in an empty (scratch) stage: there is nothing to run".into(),
                ));
            };
            let args = match (command, heredocs.first()) {
                (Command::Shell(s), Some(h))
                    if s.trim_start().starts_with("<<")
                        && heredocs.len() == 1
                        && s.split_whitespace().count() == 1 =>
                {
                    // `RUN <<EOF`: the heredoc is the script.
                    let body = if h.expand { x(&h.body) } else { h.body.clone() };
                    st.shell.iter().cloned().chain([body]).collect()
                }
                (Command::Shell(s), Some(_)) => {
                    // `RUN cmd <<EOF`: the shell reads the heredocs itself.
                    let mut script = s.clone();
                    for h in heredocs {
                        script.push('\n');
                        script.push_str(&h.body);
                        script.push_str(&h.name);
                    }
                    st.shell.iter().cloned().chain([script]).collect()
                }
                _ => argv(st, command),
            };
            // Overlays that `from=` and read-write bind mounts show, mounted for the step.
            let mut shown: Vec<Overlay> = Vec::new();
            let specs = run_mounts(
                rt,
                opts,
                df,
                done_stages,
                mounts,
                scratch,
                ignore,
                n,
                &x,
                &mut shown,
            )
            .map_err(err)?;
            let result = run_container(
                rt,
                tk,
                opts,
                st,
                parent,
                &args,
                network.as_deref(),
                &specs,
                step,
                n,
                progress,
                &layer_tar,
            );
            drop(shown);
            result?;
        }
        Instruction::Copy(c) => {
            let host = host_based(st);
            in_overlay(rt, parent.as_deref(), scratch, n, &layer_tar, |ov| {
                if host {
                    host_symlinks_in(&ov.merged).map_err(|e| format!("preparing the copy: {e}"))?;
                }
                copy_step(rt, opts, df, done_stages, st, c, ov, scratch, ignore, n, &x)
            })
            .map_err(err)?;
        }
        Instruction::Workdir(_) => {
            let wd = st.workdir();
            in_overlay(rt, parent.as_deref(), scratch, n, &layer_tar, |ov| {
                rustix::fs::open(
                    &ov.merged,
                    OFlags::DIRECTORY | OFlags::PATH | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(std::io::Error::from)
                .and_then(|root| mkdir_in_root(&root, &wd))
                .map(|_| ())
                .map_err(|e| format!("WORKDIR {wd}: {e}"))
            })
            .map_err(err)?;
        }
        _ => unreachable!("metadata steps returned above"),
    }
    push_history(&mut st.config, &step.text, false);
    let id = rt
        .images()
        .commit_image(parent.as_deref(), Some(&layer_tar), st.config.clone(), &[])
        .map_err(|e| err(format!("storing the step's layer: {e}")))?;
    let _ = fs::remove_file(&layer_tar);
    st.image = Some(id.clone());
    if let Ok(c) = rt.images().config_document(Some(&id)) {
        st.config = c;
    }
    cache.map.insert(key, id);
    cache.save();
    Ok(Outcome::Ran)
}

/// Mounts an overlay of `parent` (nothing for scratch) for one step, lets `change` write into
/// it, and turns what it wrote into the layer tar `layer_tar`; the overlay is gone after.
fn in_overlay(
    rt: &Arc<impl Engine>,
    parent: Option<&str>,
    scratch: &Path,
    n: usize,
    layer_tar: &Path,
    change: impl FnOnce(&Overlay) -> Result<(), String>,
) -> Result<(), String> {
    let ov_dir = scratch.join(format!("ov{n}"));
    let layers = match parent {
        Some(p) => rt.images().resolve(p).map_err(|e| e.to_string())?.layers,
        None => Vec::new(),
    };
    let ov = Overlay::mount(&ov_dir, &layers)
        .map_err(|e| format!("mounting the image for the step: {e}"))?;
    let result = change(&ov).and_then(|()| {
        let f = File::create(layer_tar).map_err(|e| e.to_string())?;
        super::layer::upper_to_tar(&ov.upper, f).map_err(|e| e.to_string())?;
        Ok(())
    });
    drop(ov);
    let _ = fs::remove_dir_all(&ov_dir);
    result
}

fn stage_image(df: &Dockerfile, done: &HashMap<usize, String>, name: &str) -> Option<String> {
    let i = df
        .stages
        .iter()
        .position(|s| {
            s.name
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
        .or_else(|| name.parse().ok())?;
    done.get(&i).cloned()
}

#[allow(clippy::too_many_arguments)]
fn copy_step(
    rt: &Arc<impl Engine>,
    opts: &BuildOptions,
    df: &Dockerfile,
    done_stages: &HashMap<usize, String>,
    st: &StageState,
    c: &dockerfile::Copy,
    ov: &Overlay,
    scratch: &Path,
    ignore: &Ignore,
    n: usize,
    x: &dyn Fn(&str) -> String,
) -> Result<(), String> {
    // Names resolve in the image so far; a host-based one whose layers have no passwd of
    // their own has the host's.
    let names_root = if host_based(st) && !ov.merged.join("etc/passwd").exists() {
        Path::new("/")
    } else {
        ov.merged.as_path()
    };
    let owner = parse_chown(c.chown.as_deref().map(x).as_deref(), names_root)?;
    let chmod = match &c.chmod {
        None => None,
        Some(m) => Some(
            u32::from_str_radix(m, 8)
                .map_err(|_| format!("--chmod={m}: expected an octal mode"))?,
        ),
    };
    let dest = x(&c.dest);
    let dest_abs = if dest.starts_with('/') {
        dest.clone()
    } else {
        format!("{}/{}", st.workdir().trim_end_matches('/'), dest)
    };
    let root_fd = rustix::fs::open(
        &ov.merged,
        OFlags::DIRECTORY | OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("{}: {e}", ov.merged.display()))?;
    // Where the sources come from: the context, or another stage or image.
    let from_ov;
    let (src_root, src_ignore): (PathBuf, Ignore) = match &c.from {
        None => (opts.context.clone(), ignore.clone()),
        Some(f) => {
            let img = match stage_image(df, done_stages, f) {
                Some(id) => id,
                None => {
                    rt.images()
                        .resolve(f)
                        .map_err(|e| format!("COPY --from={f}: no such stage, and {e}"))?
                        .id
                }
            };
            let layers = rt.images().resolve(&img).map_err(|e| e.to_string())?.layers;
            from_ov = Overlay::mount(&scratch.join(format!("from{n}")), &layers)
                .map_err(|e| format!("mounting --from={f}: {e}"))?;
            (from_ov.merged.clone(), Ignore::parse(""))
        }
    };
    let mut items: Vec<(PathBuf, String)> = Vec::new();
    // Fetched URLs: (staged file, name), never unpacked, mode 0600 as Docker's.
    let mut fetched: Vec<(PathBuf, String)> = Vec::new();
    if c.checksum.is_some() && !c.sources.iter().any(|s| is_url(&x(s))) {
        return Err("ADD --checksum checks what a URL gives; no source here is a URL".into());
    }
    for s in &c.sources {
        let s = x(s);
        if is_url(&s) {
            if !c.add {
                return Err(format!(
                    "COPY {s}: COPY takes files of the context; ADD fetches URLs"
                ));
            }
            let file = fetch_url(&s, c.checksum.as_deref(), scratch)?;
            fetched.push((file, url_file_name(&s)));
            continue;
        }
        items.extend(sources(&src_root, &src_ignore, &s)?);
    }
    let many = items.len() + c.heredocs.len() + fetched.len() > 1;
    // As Docker: a directory when written so (`/app/`, `.`), when there are several
    // sources, when the source is a directory, or when the image has a directory there.
    let exists_as_dir =
        crate::sys::open_in_root(&root_fd, &dest_abs, OFlags::DIRECTORY | OFlags::PATH).is_ok();
    let dest_is_dir = dest.ends_with('/')
        || dest == "."
        || dest.ends_with("/.")
        || many
        || exists_as_dir
        || (items.len() == 1 && fs::symlink_metadata(&items[0].0).is_ok_and(|m| m.is_dir()));
    let (dir_path, file_name) = if dest_is_dir {
        (dest_abs.clone(), None)
    } else {
        let (d, f) = dest_abs.rsplit_once('/').unwrap_or(("", &dest_abs));
        (d.to_string(), Some(f.to_string()))
    };
    let dir = mkdir_in_root(&root_fd, &dir_path).map_err(|e| format!("{dest}: {e}"))?;
    for h in &c.heredocs {
        let tmp = scratch.join(format!("heredoc{n}"));
        let body = if h.expand { x(&h.body) } else { h.body.clone() };
        fs::write(&tmp, body).map_err(|e| e.to_string())?;
        let _ = fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644));
        let name = file_name.clone().unwrap_or_else(|| h.name.clone());
        copy_entry(&tmp, &dir, &name, owner, chmod).map_err(|e| format!("{dest}: {e}"))?;
    }
    for (file, name) in &fetched {
        let name = file_name.clone().unwrap_or_else(|| name.clone());
        copy_entry(file, &dir, &name, owner, chmod.or(Some(0o600)))
            .map_err(|e| format!("{dest}: {e}"))?;
    }
    for (p, rel) in items {
        let md = fs::symlink_metadata(&p).map_err(|e| e.to_string())?;
        if md.is_dir() {
            copy_filtered(&p, &rel, &dir, &src_ignore, owner, chmod)
                .map_err(|e| format!("copying {rel}/ to {dest}: {e}"))?;
        } else if c.add && md.is_file() && is_archive(&p) {
            // ADD of a local tar archive (plain or gzip): unpacked at the destination, which
            // is a directory (`ADD app.tar.gz /opt/app` fills /opt/app). `md` is of the item
            // itself: a symlink in the context is never followed to a host file.
            unpack_archive(&p, &root_fd, &dest_abs).map_err(|e| format!("ADD {rel}: {e}"))?;
        } else {
            let name = file_name.clone().unwrap_or_else(|| {
                p.file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
            copy_entry(&p, &dir, &name, owner, chmod)
                .map_err(|e| format!("copying {rel} to {dest}: {e}"))?;
        }
    }
    Ok(())
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// The file name `ADD URL DIR/` gives: the URL path's last segment.
fn url_file_name(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let after_host = path.splitn(4, '/').nth(3).unwrap_or("");
    after_host
        .rsplit('/')
        .find(|s| !s.is_empty())
        .unwrap_or("index.html")
        .to_string()
}

/// Fetches `url` into the build's scratch directory (once per build), checked against
/// `checksum` (`sha256:<hex>`) when given.
fn fetch_url(url: &str, checksum: Option<&str>, scratch: &Path) -> Result<PathBuf, String> {
    let mut h = Sha256::new();
    h.update(url.as_bytes());
    let file = scratch.join(format!("url-{}", hex(h)));
    if !file.is_file() {
        // A server that stops answering fails the step instead of hanging the build.
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(std::time::Duration::from_secs(30)))
            .timeout_recv_response(Some(std::time::Duration::from_secs(60)))
            .build()
            .into();
        let resp = agent
            .get(url)
            .call()
            .map_err(|e| format!("ADD {url}: {e}"))?;
        let tmp = file.with_extension("part");
        let mut out = File::create(&tmp).map_err(|e| format!("ADD {url}: {e}"))?;
        std::io::copy(&mut resp.into_body().into_reader(), &mut out)
            .map_err(|e| format!("ADD {url}: {e}"))?;
        fs::rename(&tmp, &file).map_err(|e| format!("ADD {url}: {e}"))?;
    }
    if let Some(want) = checksum {
        let (got, _) =
            crate::image::digest_of_path(&file).map_err(|e| format!("ADD {url}: {e}"))?;
        if got.to_string() != want {
            return Err(format!(
                "ADD {url}: --checksum={want} does not match what it gives ({got})"
            ));
        }
    }
    Ok(file)
}

/// Unpacks a tar archive into directory `dest` of the image, every entry written through
/// descriptors resolved inside the image's root: an entry's `..`, an absolute path, or a
/// symlink (in the archive or the image) cannot place a file outside it.
fn unpack_archive(archive: &Path, root: &OwnedFd, dest: &str) -> Result<(), String> {
    let mut f = File::open(archive).map_err(|e| e.to_string())?;
    let mut head = [0u8; 2];
    let gz = f.read_exact(&mut head).is_ok() && head == [0x1f, 0x8b];
    let f = File::open(archive).map_err(|e| e.to_string())?;
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(f))
    } else {
        Box::new(f)
    };
    let mut a = tar::Archive::new(reader);
    for entry in a.entries().map_err(|e| e.to_string())? {
        let mut e = entry.map_err(|e| e.to_string())?;
        let path = e.path().map_err(|e| e.to_string())?.into_owned();
        if path
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(format!("entry `{}` climbs out with `..`", path.display()));
        }
        let parts: Vec<String> = path
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        let Some((name, parents)) = parts.split_last() else {
            continue;
        };
        let parent = format!("{}/{}", dest.trim_end_matches('/'), parents.join("/"));
        let dir = mkdir_in_root(root, &parent).map_err(|err| format!("{parent}: {err}"))?;
        let h = e.header();
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        let uid = u32::try_from(h.uid().unwrap_or(0)).unwrap_or(0);
        let gid = u32::try_from(h.gid().unwrap_or(0)).unwrap_or(0);
        let kind = h.entry_type();
        let own = |fd: &OwnedFd| {
            let _ = rustix::fs::fchown(
                fd,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            );
            let _ = rustix::fs::fchmod(fd, Mode::from_raw_mode(mode));
        };
        let io = |err: std::io::Error| format!("{}: {err}", path.display());
        match kind {
            tar::EntryType::Directory => {
                match rustix::fs::mkdirat(&dir, name.as_str(), Mode::from_raw_mode(mode)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(err) => return Err(io(err.into())),
                }
                let fd = rustix::fs::openat(
                    &dir,
                    name.as_str(),
                    OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|err| io(err.into()))?;
                own(&fd);
            }
            tar::EntryType::Symlink => {
                let target = e
                    .link_name()
                    .map_err(|err| err.to_string())?
                    .unwrap_or_default()
                    .into_owned();
                let _ = rustix::fs::unlinkat(&dir, name.as_str(), rustix::fs::AtFlags::empty());
                rustix::fs::symlinkat(&target, &dir, name.as_str())
                    .map_err(|err| io(err.into()))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let _ = rustix::fs::unlinkat(&dir, name.as_str(), rustix::fs::AtFlags::empty());
                let mut out = crate::support::create_new_at(&dir, name.as_str())
                    .map_err(|err| io(err.into()))?;
                std::io::copy(&mut e, &mut out).map_err(io)?;
                own(&OwnedFd::from(out));
            }
            other => {
                return Err(format!(
                    "entry `{}`: {other:?} entries are not unpacked by ADD (files, directories and symlinks are)",
                    path.display()
                ));
            }
        }
    }
    Ok(())
}

fn is_archive(p: &Path) -> bool {
    let mut head = [0u8; 262];
    let n = File::open(p)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    (n >= 2 && head[..2] == [0x1f, 0x8b]) || (n >= 262 && &head[257..262] == b"ustar")
}

/// The mounts of a `RUN --mount=...` step, for its container.
#[allow(clippy::too_many_arguments)]
fn run_mounts(
    rt: &Arc<impl Engine>,
    opts: &BuildOptions,
    df: &Dockerfile,
    done_stages: &HashMap<usize, String>,
    mounts: &[RunMount],
    scratch: &Path,
    ignore: &Ignore,
    n: usize,
    x: &dyn Fn(&str) -> String,
    shown: &mut Vec<Overlay>,
) -> Result<Vec<crate::disk::MountSpec>, String> {
    use crate::disk::{MountSpec, Source};
    let mut out = Vec::new();
    for (i, m) in mounts.iter().enumerate() {
        let target = x(&m.target);
        let what = format!("--mount type={:?} target={target}", m.kind).to_lowercase();
        let source = match m.kind {
            MountKind::Secret | MountKind::Ssh => {
                return Err(format!(
                    "{what}: build secrets and SSH agents are not supported yet; pass what the step needs as a build arg or a file of the context"
                ));
            }
            MountKind::Tmpfs => Source::Tmpfs {
                size: m.size,
                mode: m.mode,
            },
            MountKind::Cache => {
                // Kept beside the build cache, one directory per id, for every build of this
                // state root.
                let id = m.id.clone().unwrap_or_else(|| target.clone());
                let mut h = Sha256::new();
                h.update(id.as_bytes());
                let dir = build_dir(scratch).join("cache-mounts").join(hex(h));
                if !dir.is_dir() {
                    fs::create_dir_all(&dir).map_err(|e| format!("{what}: {e}"))?;
                    let _ = fs::set_permissions(
                        &dir,
                        fs::Permissions::from_mode(m.mode.unwrap_or(0o755)),
                    );
                    let _ = std::os::unix::fs::chown(&dir, m.uid.or(Some(0)), m.gid.or(Some(0)));
                }
                Source::Bind {
                    path: dir,
                    create: false,
                }
            }
            MountKind::Bind => {
                let src = x(m.source.as_deref().unwrap_or("."));
                let base: PathBuf = match &m.from {
                    Some(f) => {
                        let f = x(f);
                        let id = stage_image(df, done_stages, &f)
                            .or_else(|| rt.images().resolve(&f).ok().map(|i| i.id))
                            .ok_or_else(|| format!("{what}: from={f}: no such stage or image"))?;
                        let layers = rt.images().resolve(&id).map_err(|e| e.to_string())?.layers;
                        let ov = Overlay::mount(&scratch.join(format!("mnt{n}-{i}")), &layers)
                            .map_err(|e| format!("{what}: mounting {f}: {e}"))?;
                        let merged = ov.merged.clone();
                        shown.push(ov);
                        merged
                    }
                    None => opts.context.clone(),
                };
                let rel: Vec<&str> = src
                    .split('/')
                    .filter(|c| !c.is_empty() && *c != ".")
                    .collect();
                if rel.contains(&"..") {
                    return Err(format!("{what}: source={src} leaves the context"));
                }
                let mut path = base.join(rel.join("/"));
                if m.from.is_some() {
                    // Resolved inside the stage's root: a symlink in it (`/h -> /`) must not
                    // turn the mount into one of the host's files.
                    path = resolve_in(&base, &rel.join("/"))
                        .map_err(|e| format!("{what}: source={src}: {e}"))?;
                }
                if m.from.is_none() {
                    // Inside the context, symlinks too.
                    let real = fs::canonicalize(&path)
                        .map_err(|e| format!("{what}: source={src}: {e}"))?;
                    let ctx = fs::canonicalize(&opts.context).map_err(|e| e.to_string())?;
                    if !real.starts_with(&ctx) {
                        return Err(format!("{what}: source={src} leaves the context"));
                    }
                    // What `.dockerignore` leaves out of the context is not shown either.
                    let rel_src = real
                        .strip_prefix(&ctx)
                        .map(|r| r.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    if !rel_src.is_empty()
                        && ignore.ignored(&rel_src)
                        && !(real.is_dir() && ignore.reopened_below(&rel_src))
                    {
                        return Err(format!("{what}: source={src} is excluded by .dockerignore"));
                    }
                    let hidden = if real.is_dir() {
                        ignored_below(&real, &rel_src, ignore)
                            .map_err(|e| format!("{what}: source={src}: {e}"))?
                    } else {
                        Vec::new()
                    };
                    path = real;
                    if m.read_write || !hidden.is_empty() {
                        // An overlay over the context's files: writes go to its throw-away
                        // upper layer, and each ignored entry is one whiteout (a 0:0 device)
                        // made in that layer before it is mounted, however large it is.
                        let ov_dir = scratch.join(format!("mnt{n}-{i}"));
                        for h in &hidden {
                            let wh = ov_dir.join("upper").join(h);
                            if let Some(parent) = wh.parent() {
                                fs::create_dir_all(parent)
                                    .map_err(|e| format!("{what}: hiding {}: {e}", h.display()))?;
                            }
                            nix::sys::stat::mknod(
                                &wh,
                                nix::sys::stat::SFlag::S_IFCHR,
                                nix::sys::stat::Mode::empty(),
                                nix::sys::stat::makedev(0, 0),
                            )
                            .map_err(|e| format!("{what}: hiding {}: {e}", h.display()))?;
                        }
                        let ov =
                            Overlay::mount(&ov_dir, &[path]).map_err(|e| format!("{what}: {e}"))?;
                        path = ov.merged.clone();
                        shown.push(ov);
                    }
                }
                Source::Bind {
                    path,
                    create: false,
                }
            }
        };
        out.push(MountSpec {
            source,
            target,
            read_only: !m.read_write,
            propagation: None,
        });
    }
    Ok(out)
}

/// The entries under `dir` (the context's `rel`) that `.dockerignore` leaves out, relative to
/// `dir`; a directory that is left out whole is one entry.
fn ignored_below(dir: &Path, rel: &str, ignore: &Ignore) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(sub) = stack.pop() {
        for e in fs::read_dir(dir.join(&sub))? {
            let e = e?;
            let name = sub.join(e.file_name());
            let r = join(rel, &name.to_string_lossy());
            let is_dir = e.file_type()?.is_dir();
            if ignore.ignored(&r) && !(is_dir && ignore.reopened_below(&r)) {
                out.push(name);
            } else if is_dir {
                stack.push(name);
            }
        }
    }
    Ok(out)
}

/// The host path of `rel` inside the directory `root`, every symlink resolved within it
/// (openat2 RESOLVE_IN_ROOT, then the kernel's own name for what was opened).
fn resolve_in(root: &Path, rel: &str) -> std::io::Result<PathBuf> {
    use std::os::fd::AsRawFd;
    let root = &fs::canonicalize(root)?;
    let dir = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let fd = crate::sys::open_in_root(&dir, rel, OFlags::PATH)?;
    let real = fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    if !real.starts_with(root) {
        return Err(std::io::Error::other("it is not inside the stage"));
    }
    Ok(real)
}

/// `<root>/build`, from a build's scratch directory (`<root>/build/tmp/b<pid>`).
fn build_dir(scratch: &Path) -> PathBuf {
    scratch
        .parent()
        .and_then(Path::parent)
        .map_or_else(|| scratch.to_path_buf(), Path::to_path_buf)
}

#[allow(clippy::too_many_arguments)]
fn run_container(
    rt: &Arc<impl Engine>,
    tk: &tokio::runtime::Runtime,
    opts: &BuildOptions,
    st: &StageState,
    parent: &str,
    args: &[String],
    network: Option<&str>,
    mounts: &[crate::disk::MountSpec],
    step: &Step,
    n: usize,
    progress: &dyn Fn(BuildEvent),
    layer_tar: &Path,
) -> Result<(), BuildError> {
    let file = &opts.dockerfile_name;
    // `_` cannot start a project name, so no user project is ever taken for a build's.
    let project = format!("_build{}", std::process::id());
    let name = format!("{project}-step{n}");
    let mut def = crate::spec::model::Service {
        image: Some(parent.to_string()),
        entrypoint: Some(args.to_vec()),
        command: Some(Vec::new()),
        network_mode: Some(
            network
                .or(opts.network.as_deref())
                .unwrap_or("host")
                .to_string(),
        ),
        working_dir: Some(st.workdir()),
        shm_size: opts.shm_size,
        extra_hosts: opts.extra_hosts.clone(),
        ..Default::default()
    };
    if let Some(u) = st.config["config"]["User"]
        .as_str()
        .filter(|u| !u.is_empty())
    {
        def.user = Some(u.to_string());
    }
    // Build args are in the environment of RUN, under the image's ENV.
    for (k, v) in &st.args {
        if st
            .var(k)
            .is_some_and(|e| st.env().iter().any(|(n, w)| n == k && *w == e))
        {
            continue;
        }
        def.environment.insert(k.clone(), Some(v.clone()));
    }
    let spec = ContainerSpec {
        project: project.clone(),
        service: "build".into(),
        index: n as u32,
        name: name.clone(),
        config_hash: String::new(),
        definition: def,
        oneoff: true,
        networks: Vec::new(),
        mounts: mounts.to_vec(),
        granted: Vec::new(),
    };
    let fail = |message: String| BuildError::Step {
        file: file.clone(),
        line: step.line,
        message,
    };
    tk.block_on(rt.create(&spec))
        .map_err(|e| fail(e.to_string()))?;
    let result = (|| -> Result<(), BuildError> {
        tk.block_on(rt.start(&name))
            .map_err(|e| fail(e.to_string()))?;
        let state = tk
            .block_on(rt.wait(&name))
            .map_err(|e| fail(e.to_string()))?;
        let info = rt.info(&name).map_err(|e| fail(e.to_string()))?;
        let output = read_log(&info.dir.join(crate::runtime::LOG_FILE));
        for l in output.lines() {
            progress(BuildEvent::Output {
                n,
                line: l.to_string(),
            });
        }
        let status = match state {
            crate::plan::State::Exited(c) => c,
            crate::plan::State::OomKilled => 137,
            _ => 0,
        };
        if status != 0 {
            let tail: Vec<&str> = output.lines().rev().take(30).collect();
            return Err(BuildError::RunFailed {
                file: file.clone(),
                line: step.line,
                command: step.text.clone(),
                status,
                output: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            });
        }
        let f =
            File::create(layer_tar).map_err(|e| fail(format!("{}: {e}", layer_tar.display())))?;
        let mut w = std::io::BufWriter::new(f);
        super::layer::upper_to_tar(&info.dir.join("upper"), &mut w)
            .and_then(|_| w.flush())
            .map_err(|e| fail(format!("making the step's layer: {e}")))?;
        Ok(())
    })();
    let _ = tk.block_on(rt.remove(&name));
    result
}

fn read_log(path: &Path) -> String {
    let Ok(text) = fs::read_to_string(path) else {
        return String::new();
    };
    let mut out = String::new();
    for l in text.lines() {
        if let Ok(r) = serde_json::from_str::<serde_json::Value>(l)
            && let Some(t) = r["log"].as_str()
        {
            out.push_str(t);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_left_by_a_killed_build_are_detached() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: mounting needs root");
            return;
        }
        let t = tempfile::tempdir().expect("tempdir");
        let tmp = t.path().join("build/tmp");
        // A pid no process has (the kernel's limit is 2^22).
        let m = tmp.join("b99999999/ov 2/merged");
        let live = tmp.join("b1/ov/merged");
        fs::create_dir_all(&live).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &live,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        fs::create_dir_all(&m).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &m,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let mounted = || {
            fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .contains(&t.path().display().to_string())
        };
        let is_mounted = |p: &Path| {
            let want = p.display().to_string().replace(' ', "\\040");
            fs::read_to_string("/proc/self/mountinfo")
                .unwrap()
                .lines()
                .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
        };
        assert!(mounted() && is_mounted(&m) && is_mounted(&live));
        detach_stale_mounts(&tmp);
        let stale_left = is_mounted(&m);
        let live_kept = is_mounted(&live);
        let _ = nix::mount::umount2(&live, nix::mount::MntFlags::MNT_DETACH);
        assert!(
            !stale_left,
            "the stale mount (with a space in its path) is still there"
        );
        assert!(live_kept, "the mount of a live build (pid 1) was detached");
        assert!(!mounted());
    }

    #[test]
    fn dockerignore_matches_as_docker() {
        let i = Ignore::parse("# comment\n*.log\nbuild/\n**/secret*\n!keep.log\n");
        assert!(i.ignored("a.log"));
        assert!(!i.ignored("keep.log"));
        assert!(i.ignored("build"));
        assert!(i.ignored("build/x/y.o"));
        assert!(i.ignored("deep/down/secret.txt"));
        assert!(i.ignored("secret.txt"));
        assert!(!i.ignored("src/main.rs"));
        assert!(
            !i.ignored("sub/a.log"),
            "`*.log` is anchored at the context root"
        );
    }

    #[test]
    fn an_exception_under_an_ignored_directory_is_copied() {
        let i = Ignore::parse("data\n!data/keep.txt\n");
        assert!(i.ignored("data") && i.ignored("data/other.txt"));
        assert!(!i.ignored("data/keep.txt"));
        assert!(i.reopened_below("data"));
        assert!(!i.reopened_below("src"));
        assert!(!Ignore::parse("data\n").reopened_below("data"));
        assert!(Ignore::parse("data\n!**/*.md\n").reopened_below("data"));
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped the copy: it sets owners");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let ctx = t.path().join("ctx");
        fs::create_dir_all(ctx.join("data")).unwrap();
        fs::write(ctx.join("data/keep.txt"), "k").unwrap();
        fs::write(ctx.join("data/other.txt"), "o").unwrap();
        fs::write(ctx.join("top.txt"), "t").unwrap();
        let out = t.path().join("out");
        fs::create_dir_all(&out).unwrap();
        let fd =
            rustix::fs::open(&out, OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).unwrap();
        copy_filtered(&ctx, "", &fd, &i, None, None).unwrap();
        assert!(out.join("data/keep.txt").is_file());
        assert!(!out.join("data/other.txt").exists());
        assert!(out.join("top.txt").is_file());
        // The cache key sees the exception too.
        let key = |ig: &Ignore| {
            let mut h = Sha256::new();
            hash_tree(&mut h, &ctx, "", ig).unwrap();
            hex(h)
        };
        let before = key(&i);
        fs::write(ctx.join("data/keep.txt"), "changed").unwrap();
        assert_ne!(before, key(&i));
        let before = key(&i);
        fs::write(ctx.join("data/other.txt"), "changed").unwrap();
        assert_eq!(before, key(&i));
    }
}
