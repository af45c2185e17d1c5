//! `berth watch` (and `up --watch`): Compose's `develop.watch`. The project is brought up,
//! then the rules' paths are watched with notify; after a debounce each changed file is
//! handled by its rule: `sync` copies it into the service's running containers, `rebuild`
//! rebuilds the image and recreates that service alone, `restart` restarts it, and
//! `sync+restart` / `sync+exec` do both. Every action is logged.
//!
//! A synced file is written through the container's own root (`/proc/PID/root` of its init,
//! resolved with openat2(RESOLVE_IN_ROOT)), so a symlink inside the container cannot redirect
//! the write to the host.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use super::Global;
use super::project::{load, runtime, tokio};
use crate::build::exec::Ignore;
use crate::runtime::Runtime;

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Services to watch (all with `develop.watch` when none is named)
    pub services: Vec<String>,
    /// Don't bring the project up first
    #[arg(long)]
    pub no_up: bool,
}

use crate::spec::model::WatchRule as Rule;

struct Watched {
    service: String,
    rule: Rule,
    ignore: Ignore,
    include: Option<Ignore>,
}

impl Watched {
    /// The path of `p` relative to the rule's path, if the rule takes it.
    fn takes(&self, p: &Path) -> Option<String> {
        let rel = p.strip_prefix(&self.rule.path).ok()?;
        let rel = rel.to_string_lossy().into_owned();
        if !rel.is_empty() && self.ignore.ignored(&rel) {
            return None;
        }
        if let Some(inc) = &self.include
            && !rel.is_empty()
            && !inc.ignored(&rel)
        {
            return None;
        }
        Some(rel)
    }
}

fn rules(project: &crate::spec::model::Project, only: &[String]) -> anyhow::Result<Vec<Watched>> {
    let mut out = Vec::new();
    for (name, svc) in &project.services {
        if !only.is_empty() && !only.contains(name) {
            continue;
        }
        let Some(d) = &svc.develop else {
            continue;
        };
        // The actions and their needs were checked when the file was loaded.
        for rule in d.watch.clone() {
            out.push(Watched {
                service: name.clone(),
                ignore: Ignore::parse(&rule.ignore.join("\n")),
                include: (!rule.include.is_empty())
                    .then(|| Ignore::parse(&rule.include.join("\n"))),
                rule,
            });
        }
    }
    Ok(out)
}

/// The global flags again, for the berth commands the watcher runs.
fn global_args(g: &Global) -> Vec<String> {
    let mut v = Vec::new();
    for f in &g.files {
        v.push("-f".into());
        v.push(f.display().to_string());
    }
    if let Some(p) = &g.project_name {
        v.push("-p".into());
        v.push(p.clone());
    }
    if let Some(d) = &g.project_directory {
        v.push("--project-directory".into());
        v.push(d.display().to_string());
    }
    for e in &g.env_files {
        v.push("--env-file".into());
        v.push(e.display().to_string());
    }
    for p in &g.profiles {
        v.push("--profile".into());
        v.push(p.clone());
    }
    v
}

fn berth(g: &Global, args: &[&str]) -> anyhow::Result<bool> {
    let exe = std::env::current_exe().context("finding the berth binary")?;
    let st = Command::new(exe)
        .args(global_args(g))
        .args(args)
        .status()
        .context("running berth")?;
    Ok(st.success())
}

/// Writes (or removes, when it is gone on the host) `src` at `target` in the container whose
/// init is `pid`.
fn sync_one(pid: i32, src: &Path, target: &str) -> std::io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    let root = rustix::fs::open(
        format!("/proc/{pid}/root"),
        OFlags::DIRECTORY | OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let (dir, name) = target
        .trim_end_matches('/')
        .rsplit_once('/')
        .unwrap_or(("", target));
    let dirfd = crate::build::exec::mkdir_in_root(&root, dir)?;
    if std::fs::symlink_metadata(src).is_err() {
        let flags = if rustix::fs::statat(&dirfd, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|s| rustix::fs::FileType::from_raw_mode(s.st_mode).is_dir())
        {
            rustix::fs::AtFlags::REMOVEDIR
        } else {
            rustix::fs::AtFlags::empty()
        };
        return match rustix::fs::unlinkat(&dirfd, name, flags) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        };
    }
    if std::fs::symlink_metadata(src).is_ok_and(|m| m.is_dir()) {
        // The directory itself; the files in it come as events (or from `initial_sync`'s walk)
        // of their own, each checked against the rule's ignore list.
        crate::build::exec::mkdir_in_root(&root, target)?;
        return Ok(());
    }
    crate::build::exec::copy_entry(src, &dirfd, name, None, None)
}

/// Every path under `dir` that `w` takes, relative to the rule's path, parents first.
fn walk(w: &Watched, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut names: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    names.sort();
    for p in names {
        if let Some(rel) = w.takes(&p) {
            out.push(rel);
            // Not through a symlink: `src/link -> /etc` must not sync the host's /etc.
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                walk(w, &p, out);
            }
        }
    }
}

pub fn run(g: &Global, a: &WatchArgs) -> anyhow::Result<i32> {
    let l = load(g)?;
    let watched = rules(&l.target.project, &a.services)?;
    if watched.is_empty() {
        bail!("no service of this project has `develop.watch` rules: there is nothing to watch");
    }
    if !a.no_up && !berth(g, &["up", "-d", "--progress", "plain"])? {
        bail!("berth up failed; not watching");
    }
    let rt = runtime()?;
    let tk = tokio()?;
    let project = l.target.project.name.clone();
    let running = |service: &str| -> Vec<(String, i32)> {
        tk.block_on(rt.observe(&project))
            .map(|o| {
                o.containers
                    .into_iter()
                    .filter(|c| c.service == service && c.state == crate::plan::State::Running)
                    .filter_map(|c| Some((c.name, c.pid?)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let sync = |w: &Watched, rel: &str| {
        let src = w.rule.path.join(rel);
        // The file's real directory must be inside the rule's path: a symlinked directory
        // in the watched tree does not lead the sync to host files.
        let inside = match (
            std::fs::canonicalize(src.parent().unwrap_or(&w.rule.path)),
            std::fs::canonicalize(&w.rule.path),
        ) {
            (Ok(real), Ok(top)) => rel.is_empty() || real.starts_with(&top) || !src.exists(),
            _ => !src.exists(),
        };
        if !inside {
            eprintln!(
                "berth watch: {} leads outside {}: not synced",
                src.display(),
                w.rule.path.display()
            );
            return;
        }
        let base = w.rule.target.as_deref().unwrap_or("/");
        let target = if rel.is_empty() {
            base.to_string()
        } else {
            format!("{}/{rel}", base.trim_end_matches('/'))
        };
        for (name, pid) in running(&w.service) {
            match sync_one(pid, &src, &target) {
                Ok(()) => eprintln!("berth watch: synced {} -> {name}:{target}", src.display()),
                Err(e) => eprintln!(
                    "berth watch: sync {} -> {name}:{target}: {e}",
                    src.display()
                ),
            }
        }
    };
    for w in watched.iter().filter(|w| w.rule.initial_sync) {
        let mut all = vec![String::new()];
        if w.rule.path.is_dir() {
            walk(w, &w.rule.path, &mut all);
        }
        for rel in all {
            sync(w, &rel);
        }
    }

    use notify::Watcher;
    let (tx, rx) = mpsc::channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        // Only changes: reads (which the sync itself does) would feed back into the loop.
        if let Ok(ev) = ev
            && matches!(
                ev.kind,
                notify::EventKind::Create(_)
                    | notify::EventKind::Modify(_)
                    | notify::EventKind::Remove(_)
            )
        {
            for p in ev.paths {
                let _ = tx.send(p);
            }
        }
    })
    .context("starting the file watcher")?;
    let mut roots: BTreeSet<PathBuf> = BTreeSet::new();
    for w in &watched {
        // A single file is watched through its directory: editors replace files by rename.
        let root = if w.rule.path.is_dir() {
            w.rule.path.clone()
        } else {
            w.rule
                .path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default()
        };
        roots.insert(root);
    }
    for r in &roots {
        watcher
            .watch(r, notify::RecursiveMode::Recursive)
            .with_context(|| format!("watching {}", r.display()))?;
        eprintln!("berth watch: watching {}", r.display());
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook_like::SIGINT, signal_hook_like::SIGTERM] {
        signal_hook_like::flag(sig, stop.clone());
    }
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let Ok(first) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        // Debounce: what arrives within 100 ms of the first change is one batch.
        let mut batch: BTreeSet<PathBuf> = BTreeSet::from([first]);
        let until = Instant::now() + Duration::from_millis(100);
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(p) => {
                    batch.insert(p);
                }
                Err(_) => break,
            }
        }
        let mut rebuild: BTreeSet<String> = BTreeSet::new();
        let mut restart: BTreeSet<String> = BTreeSet::new();
        let mut execs: Vec<(String, Vec<String>)> = Vec::new();
        for p in &batch {
            // The first rule that takes a path decides, as in Compose.
            let Some((w, rel)) = watched.iter().find_map(|w| w.takes(p).map(|r| (w, r))) else {
                continue;
            };
            match w.rule.action.as_str() {
                "sync" => sync(w, &rel),
                "sync+restart" => {
                    sync(w, &rel);
                    restart.insert(w.service.clone());
                }
                "sync+exec" => {
                    sync(w, &rel);
                    if let Some(x) = &w.rule.exec {
                        execs.push((w.service.clone(), x.argv()));
                    }
                }
                "restart" => {
                    restart.insert(w.service.clone());
                }
                _ => {
                    rebuild.insert(w.service.clone());
                }
            }
        }
        for s in &rebuild {
            eprintln!("berth watch: rebuilding {s}");
            let ok = berth(
                g,
                &[
                    "up",
                    "-d",
                    "--build",
                    "--no-deps",
                    "--force-recreate",
                    "--progress",
                    "plain",
                    s,
                ],
            )
            .unwrap_or(false);
            eprintln!(
                "berth watch: {s} {}",
                if ok {
                    "rebuilt and recreated"
                } else {
                    "rebuild failed"
                }
            );
        }
        for s in restart.difference(&rebuild) {
            eprintln!("berth watch: restarting {s}");
            let _ = berth(g, &["restart", "--progress", "plain", s]);
        }
        for (s, cmd) in &execs {
            eprintln!("berth watch: exec in {s}: {}", cmd.join(" "));
            let mut args = vec!["exec", "-T", s.as_str()];
            args.extend(cmd.iter().map(String::as_str));
            let _ = berth(g, &args);
        }
    }
    drop(watcher);
    eprintln!("berth watch: stopped (the project stays up; `berth down` stops it)");
    Ok(0)
}

/// SIGINT/SIGTERM set a flag, so the loop ends between batches.
mod signal_hook_like {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    pub const SIGINT: i32 = libc::SIGINT;
    pub const SIGTERM: i32 = libc::SIGTERM;

    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();

    extern "C" fn on_signal(_: libc::c_int) {
        if let Some(f) = FLAG.get() {
            f.store(true, Ordering::Relaxed);
        }
    }

    pub fn flag(sig: i32, f: Arc<AtomicBool>) {
        let _ = FLAG.set(f);
        // SAFETY: the handler only does an atomic store, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}
