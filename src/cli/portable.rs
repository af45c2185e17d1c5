//! `berth export` and `berth import`: a project, its images, volumes and private disks, in one
//! archive (the format is in `portable`).

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Global;
use super::ctx::{human, state_root};
use super::project::{Progress, load, runtime};
use crate::portable::export::{Exporter, disk_data, sync_mounted};
use crate::portable::{FORMAT, Header, ImageUse, Item, VERSION, VolumeEntry};
use crate::runtime::Inspect;
use crate::runtime::Runtime;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Write to FILE (`-`: standard output, the default when it is not a terminal)
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// How to show progress
    #[arg(long, value_enum, default_value_t = Progress::Auto)]
    pub progress: Progress,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The archive (`-`: standard input)
    pub file: PathBuf,
    /// How to show progress
    #[arg(long, value_enum, default_value_t = Progress::Auto)]
    pub progress: Progress,
}

/// A byte counter on stderr: an indicatif bar on a terminal (or with `--progress tty`),
/// nothing otherwise (the summary line says what was done).
fn bar(mode: Progress, len: Option<u64>, verb: &str) -> Option<ProgressBar> {
    let on = match mode {
        Progress::Tty => true,
        Progress::Auto => std::io::stderr().is_terminal(),
        Progress::Plain | Progress::Quiet => false,
    };
    if !on {
        return None;
    }
    let pb = match len {
        Some(n) => ProgressBar::with_draw_target(
            Some(n),
            ProgressDrawTarget::term_like(Box::new(console::Term::stderr())),
        ),
        None => ProgressBar::with_draw_target(
            None,
            ProgressDrawTarget::term_like(Box::new(console::Term::stderr())),
        ),
    };
    let template = if len.is_some() {
        " {prefix} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {msg}"
    } else {
        " {prefix} {spinner} {bytes:>10} {bytes_per_sec:>12} {msg}"
    };
    pb.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(verb.to_string());
    // No steady tick: its thread would not hold the signals an export holds while the
    // project is paused (a Ctrl-C there would kill berth with the containers frozen). The
    // bar redraws as bytes arrive.
    Some(pb)
}

/// `path` (absolute, or relative to `dir`) relative to `dir`, if it lies inside it.
fn inside(dir: &Path, path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    };
    let abs = std::path::absolute(&abs).ok()?;
    let rel = abs.strip_prefix(dir).ok()?.to_path_buf();
    // `..` inside a path that starts in the directory can still leave it.
    if rel
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return None;
    }
    Some(rel)
}

/// Bytes of the regular files under `p` (their length, not blocks).
fn tree_bytes(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if md.is_file() {
        return md.size();
    }
    if !md.is_dir() {
        return 0;
    }
    std::fs::read_dir(p)
        .map(|d| d.flatten().map(|e| tree_bytes(&e.path())).sum())
        .unwrap_or(0)
}

pub fn export(g: &Global, a: &ExportArgs) -> anyhow::Result<i32> {
    let started = Instant::now();
    let l = load(g)?;
    let project = &l.target.project;
    let dir = std::path::absolute(&l.target.dir).unwrap_or_else(|_| l.target.dir.clone());
    let root = state_root();
    let quiet = a.progress == Progress::Quiet;

    // The project's files: its compose files and `.env`, and what it names inside its
    // directory. What lies outside is this host's, not the project's: said, not carried.
    let mut files = Vec::new();
    for f in &l.record.files {
        let Some(rel) = inside(&dir, &f.to_string_lossy()) else {
            bail!(
                "the project file {} is outside the project directory {}; an export carries that directory's files only (--project-directory DIR)",
                f.display(),
                dir.display()
            );
        };
        files.push(rel.to_string_lossy().into_owned());
    }
    let mut roots: Vec<PathBuf> = files.iter().map(PathBuf::from).collect();
    if dir.join(".env").is_file() {
        roots.push(PathBuf::from(".env"));
    }
    let mut outside: Vec<String> = Vec::new();
    let mut want = |path: &str, what: String| match inside(&dir, path) {
        Some(rel) if dir.join(&rel).exists() => roots.push(rel),
        Some(_) => {}
        None => outside.push(format!("{what} {path} (outside the project directory)")),
    };
    for f in &g.env_files {
        want(&f.to_string_lossy(), "--env-file".into());
    }
    // `env_file`s are read into `environment` when the project loads; their paths are in
    // the merged tree.
    if let Some(services) = l.tree.get("services").and_then(|s| s.as_map()) {
        for (key, svc) in services {
            let paths: Vec<&str> = match svc.get("env_file") {
                Some(n) if n.as_str().is_some() => n.as_str().into_iter().collect(),
                Some(n) => n
                    .as_seq()
                    .map(|items| {
                        items
                            .iter()
                            .filter_map(|i| i.as_str().or_else(|| i.get("path")?.as_str()))
                            .collect()
                    })
                    .unwrap_or_default(),
                None => Vec::new(),
            };
            for p in paths {
                want(p, format!("services.{}.env_file", key.name));
            }
        }
    }
    for (name, svc) in &project.services {
        if let Some(b) = &svc.build {
            want(&b.context, format!("services.{name}.build.context"));
        }
        for m in &svc.volumes {
            if m.kind == "bind"
                && let Some(s) = &m.source
            {
                want(s, format!("services.{name}.volumes (bind mount)"));
            }
        }
    }
    for (k, o) in project
        .secrets
        .iter()
        .map(|(k, o)| (format!("secrets.{k}"), o))
        .chain(
            project
                .configs
                .iter()
                .map(|(k, o)| (format!("configs.{k}"), o)),
        )
    {
        if let Some(f) = &o.file {
            want(f, k);
        }
    }
    for (k, d) in &project.disks {
        if let Some(s) = &d.source
            && d.kind == crate::spec::model::DiskKind::Shared
        {
            want(s, format!("disks.{k}.source (shared disk seed)"));
        }
    }

    for (k, v) in &project.volumes {
        if v.external.unwrap_or(false) {
            outside.push(format!("the external volume {k} (it belongs to the host)"));
        }
    }
    for (k, d) in &project.disks {
        if d.external.unwrap_or(false) {
            outside.push(format!("the external disk {k} (it belongs to the host)"));
        }
    }

    // Images: every service's, from the store; `host` is every host's own.
    let rt = runtime()?;
    let store = rt.images();
    let mut refs: Vec<String> = Vec::new();
    let mut uses = Vec::new();
    for (name, svc) in &project.services {
        let Some(image) = svc.image.as_deref().filter(|i| *i != "host") else {
            continue;
        };
        let img = store.resolve(image).with_context(|| {
            format!(
                "service {name} uses image {image}, which is not in this host's store (`berth pull` or `berth build` it first)"
            )
        })?;
        if !refs.iter().any(|r| r == image) {
            refs.push(image.to_string());
        }
        uses.push(ImageUse {
            service: name.clone(),
            reference: image.to_string(),
            id: img.id.clone(),
        });
    }

    // Volumes and private disks that exist here.
    let mut volumes: Vec<(VolumeEntry, PathBuf)> = Vec::new();
    let mut disks: Vec<(crate::portable::DiskEntry, PathBuf)> = Vec::new();
    for (item, host) in crate::portable::items(project) {
        match &item {
            Item::Disk { key } => {
                let img = crate::disk::private::image_path(&root, &host);
                if !img.is_file() {
                    continue;
                }
                let labels = project
                    .disks
                    .get(key)
                    .map(|d| d.labels.clone())
                    .unwrap_or_default();
                disks.push((
                    crate::portable::DiskEntry {
                        n: disks.len() as u32,
                        item,
                        name: host,
                        size: std::fs::metadata(&img).map_or(0, |m| m.len()),
                        data: disk_data(&img).unwrap_or(0),
                        labels,
                    },
                    img,
                ));
            }
            _ => {
                let data = crate::disk::volumes_dir(&root).join(&host).join("_data");
                if !data.is_dir() {
                    continue;
                }
                let labels = match &item {
                    Item::Volume { key } => project
                        .volumes
                        .get(key)
                        .map(|v| v.labels.clone())
                        .unwrap_or_default(),
                    _ => Default::default(),
                };
                volumes.push((
                    VolumeEntry {
                        n: volumes.len() as u32,
                        item,
                        name: host,
                        labels,
                    },
                    data,
                ));
            }
        }
    }

    // Running containers are paused (cgroup freezer) while their volumes and disks are
    // copied, so the copy is one consistent moment of the whole project.
    let tk = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let observed = tk.block_on(rt.observe(&project.name))?;
    drop(tk);
    let running: Vec<_> = observed
        .containers
        .iter()
        .filter(|c| c.state == crate::plan::State::Running)
        .cloned()
        .collect();
    // Paused ones stay paused; their disks are flushed too.
    let live: Vec<_> = observed
        .containers
        .iter()
        .filter(|c| {
            matches!(
                c.state,
                crate::plan::State::Running | crate::plan::State::Paused
            )
        })
        .cloned()
        .collect();

    let total: u64 = roots.iter().map(|r| tree_bytes(&dir.join(r))).sum::<u64>()
        + store.saved_bytes(&refs)?
        + volumes.iter().map(|(_, p)| tree_bytes(p)).sum::<u64>()
        + disks.iter().map(|(d, _)| d.data).sum::<u64>();

    let to_stdout = a.output.as_deref().is_none_or(|o| o.as_os_str() == "-");
    if to_stdout && std::io::stdout().is_terminal() {
        bail!(
            "refusing to write an archive to a terminal; use -o FILE or redirect standard output"
        );
    }
    let (out, tmp): (Box<dyn Write>, Option<(PathBuf, PathBuf)>) = if to_stdout {
        (Box::new(std::io::stdout().lock()), None)
    } else {
        let path = a.output.clone().unwrap_or_default();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "export.tar".into());
        let tmp = path.with_file_name(format!(".{name}.berth-{}", std::process::id()));
        let f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        (Box::new(f), Some((tmp, path)))
    };
    let out = std::io::BufWriter::with_capacity(1 << 20, out);

    let pb = bar(a.progress, Some(total), "Exporting");
    let counter = |n: u64| {
        if let Some(pb) = &pb {
            pb.inc(n);
        }
    };
    // A line above the bar, not through it.
    let say = |line: &str| match &pb {
        Some(pb) => pb.suspend(|| eprintln!("{line}")),
        None => eprintln!("{line}"),
    };
    let header = Header {
        format: FORMAT.into(),
        version: VERSION,
        project: project.name.clone(),
        files: files.clone(),
        created: crate::portable::now(),
        berth: env!("CARGO_PKG_VERSION").into(),
        images: uses,
        volumes: volumes.iter().map(|(v, _)| v.clone()).collect(),
        disks: disks.iter().map(|(d, _)| d.clone()).collect(),
    };
    let mut paused_for = Duration::ZERO;
    let mut skipped = 0;
    let result = (|| -> anyhow::Result<()> {
        let mut e = Exporter::new(out, &header, &counter)?;
        if let Some((tmp, _)) = &tmp {
            use std::os::unix::fs::MetadataExt;
            let md = std::fs::metadata(tmp)?;
            e.skip_file(md.dev(), md.ino());
        }
        skipped += e.tree(crate::portable::PROJECT, &dir, &roots)?;
        for r in e.left_out() {
            outside.push(format!(
                "{} (reached through a symlinked directory; the link itself is carried)",
                r.display()
            ));
        }
        e.images(store, &refs)?;
        let has_data = !volumes.is_empty() || !disks.is_empty();
        let need_pause = !running.is_empty() && has_data;
        let mut frozen = Vec::new();
        if need_pause {
            let names: Vec<&str> = running.iter().map(|c| c.name.as_str()).collect();
            if !quiet {
                say(&format!(
                    " Pausing {} while the volumes and disks are copied",
                    names.join(", ")
                ));
            }
        }
        let t0 = Instant::now();
        // Signals wait until the containers are thawed: an export stopped by Ctrl-C must not
        // leave a project paused.
        let guard = need_pause.then(SignalsHeld::new);
        let copy = (|| -> anyhow::Result<()> {
            for c in running.iter().filter(|_| need_pause) {
                rt.freeze(&c.name, true)?;
                frozen.push(c.name.clone());
            }
            if has_data {
                // What the frozen processes wrote to a private disk reaches its image.
                for (d, img) in &disks {
                    let Item::Disk { key } = &d.item else {
                        continue;
                    };
                    let Some(dev) = crate::disk::private::attached(img) else {
                        continue;
                    };
                    for c in &live {
                        let Some(svc) = project.services.get(&c.service) else {
                            continue;
                        };
                        for dm in svc.disks.iter().filter(|dm| &dm.source == key) {
                            if let Some(pid) = c.pid {
                                sync_mounted(pid, &dm.target, Path::new(&dev)).with_context(
                                    || format!("flushing disk {} in container {}", d.name, c.name),
                                )?;
                            }
                        }
                    }
                }
            }
            for (v, data) in &volumes {
                skipped += e.tree(&format!("volumes/{}", v.n), data, &[PathBuf::new()])?;
            }
            for (d, img) in &disks {
                e.disk(img, d)?;
            }
            Ok(())
        })();
        for n in &frozen {
            if let Err(err) = rt.freeze(n, false) {
                eprintln!("berth: {err}; `berth unpause` resumes it");
            }
        }
        drop(guard);
        if need_pause {
            paused_for = t0.elapsed();
            if !quiet {
                say(&format!(
                    " Resumed {} (paused {} ms)",
                    frozen.join(", "),
                    paused_for.as_millis()
                ));
            }
        }
        copy?;
        let w = e.finish()?;
        let inner = w.into_inner().map_err(|e| e.into_error())?;
        drop(inner);
        if let Some((tmp, path)) = &tmp {
            // Like tar, no fsync: the archive is for moving, and the source is still here.
            std::fs::rename(tmp, path).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    })();
    if let Some(pb) = &pb {
        pb.finish_and_clear();
    }
    if let Err(e) = result {
        if let Some((tmp, _)) = &tmp {
            let _ = std::fs::remove_file(tmp);
        }
        return Err(e);
    }
    if !quiet {
        for o in &outside {
            eprintln!("berth: note: not exported: {o}");
        }
        if skipped > 0 {
            eprintln!("berth: note: {skipped} device, fifo or socket file(s) were left out");
        }
        eprintln!(
            "Exported project {} {}: {} image{}, {} volume{}, {} private disk{}, {} in {:.1} s",
            project.name,
            tmp.as_ref()
                .map(|(_, p)| format!("to {}", p.display()))
                .unwrap_or_else(|| "to standard output".into()),
            refs.len(),
            if refs.len() == 1 { "" } else { "s" },
            volumes.len(),
            if volumes.len() == 1 { "" } else { "s" },
            disks.len(),
            if disks.len() == 1 { "" } else { "s" },
            human(total),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(0)
}

/// Blocks SIGINT, SIGTERM, SIGHUP and SIGQUIT in this (single-threaded) process while held;
/// a signal that came meanwhile is delivered when it is dropped.
struct SignalsHeld {
    old: nix::sys::signal::SigSet,
}

impl SignalsHeld {
    fn new() -> SignalsHeld {
        use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
        let mut set = SigSet::empty();
        for s in [
            Signal::SIGINT,
            Signal::SIGTERM,
            Signal::SIGHUP,
            Signal::SIGQUIT,
        ] {
            set.add(s);
        }
        let mut old = SigSet::empty();
        let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old));
        SignalsHeld { old }
    }
}

impl Drop for SignalsHeld {
    fn drop(&mut self) {
        use nix::sys::signal::{SigmaskHow, sigprocmask};
        let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&self.old), None);
    }
}

/// Counts what is read, for the progress bar.
struct Counting<'a, R> {
    inner: R,
    pb: Option<&'a ProgressBar>,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(pb) = self.pb {
            pb.inc(n as u64);
        }
        Ok(n)
    }
}

pub fn import(g: &Global, a: &ImportArgs) -> anyhow::Result<i32> {
    let started = Instant::now();
    let from_stdin = a.file.as_os_str() == "-";
    if from_stdin && std::io::stdin().is_terminal() {
        bail!(
            "standard input is a terminal; give the archive as FILE or pipe it in (`berth export | berth import -`)"
        );
    }
    let (input, len): (Box<dyn Read>, Option<u64>) = if from_stdin {
        (Box::new(std::io::stdin().lock()), None)
    } else {
        let f = std::fs::File::open(&a.file)
            .with_context(|| format!("opening {}", a.file.display()))?;
        let len = f.metadata().ok().map(|m| m.len());
        (Box::new(f), len)
    };
    let pb = bar(a.progress, len, "Importing");
    let reader = std::io::BufReader::with_capacity(
        1 << 20,
        Counting {
            inner: input,
            pb: pb.as_ref(),
        },
    );
    let opts = crate::portable::import::ImportOptions {
        root: state_root(),
        name: g.project_name.clone(),
        dir: g.project_directory.clone(),
        cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
    };
    let result = crate::portable::import::import(reader, &opts);
    if let Some(pb) = &pb {
        pb.finish_and_clear();
    }
    let what = if from_stdin {
        "standard input".to_string()
    } else {
        a.file.display().to_string()
    };
    let got = result.with_context(|| what.clone())?;
    if a.progress != Progress::Quiet {
        eprintln!(
            "Imported project {} into {}: {} image{}, {} volume{}, {} private disk{}, {} in {:.1} s",
            got.name,
            got.dir.display(),
            got.images.len(),
            if got.images.len() == 1 { "" } else { "s" },
            got.volumes.len(),
            if got.volumes.len() == 1 { "" } else { "s" },
            got.disks.len(),
            if got.disks.len() == 1 { "" } else { "s" },
            human(got.bytes),
            started.elapsed().as_secs_f64()
        );
        eprintln!("Start it with: cd {} && berth up -d", got.dir.display());
    }
    Ok(0)
}
