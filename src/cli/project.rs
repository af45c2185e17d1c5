//! What the project verbs share: loading the project (or finding it in the state root when no
//! file is at hand), the runtime, the supervisor's process, progress lines.

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::Global;
use super::ctx::Engine as LinuxRuntime;
use super::ctx::{open_runtime, state_root};
use crate::reconcile::{Event, Phase, Sink, Target};
use crate::state::{ProjectRecord, ProjectState};

pub fn runtime() -> anyhow::Result<Arc<LinuxRuntime>> {
    let root = state_root();
    Ok(Arc::new(open_runtime(&root)?))
}

pub fn tokio() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The project as loaded from its file(s), with its state directory and the record to save.
pub struct Loaded {
    pub target: Target,
    pub state: ProjectState,
    pub record: ProjectRecord,
    /// The merged file tree, to point errors found later (a taken port) at their line.
    pub tree: crate::spec::node::Node,
}

impl Loaded {
    /// `compose.yaml:7:9: services.web.ports[0]`: where a port is written.
    pub fn port_at(&self, service: &str, port: &crate::spec::model::Port) -> String {
        let (pos, path) =
            crate::spec::validate::Locator { root: &self.tree }.find_port(service, port);
        format!("{pos}: {path}")
    }
}

pub fn load(g: &Global) -> anyhow::Result<Loaded> {
    load_with(g, g.load_options())
}

/// As `load`, for a command about `services` only (none named: all): the env files of the
/// others (and of what they do not depend on) may be missing, as Compose loads lazily.
pub fn load_for(g: &Global, services: &[String]) -> anyhow::Result<Loaded> {
    let opts = crate::spec::LoadOptions {
        env_for: (!services.is_empty()).then(|| services.to_vec()),
        ..g.load_options()
    };
    load_with(g, opts)
}

fn load_with(g: &Global, opts: crate::spec::LoadOptions) -> anyhow::Result<Loaded> {
    let mut p = crate::load_project(&opts)?;
    crate::disk::shared::stamp(&mut p.loaded.project, &p.loaded.project_dir);
    crate::disk::secrets::stamp(&mut p.loaded.project, &p.loaded.project_dir);
    for w in &p.loaded.warnings {
        eprintln!("berth: warning: {w}");
    }
    let name = p.loaded.project.name.clone();
    let record = ProjectRecord {
        name: name.clone(),
        working_dir: p.loaded.project_dir.clone(),
        files: p.loaded.files.clone(),
        env_files: g
            .env_files
            .iter()
            .map(|f| std::path::absolute(f).unwrap_or_else(|_| f.clone()))
            .collect(),
        profiles: g.profiles.clone(),
    };
    Ok(Loaded {
        target: Target {
            project: p.loaded.project,
            dir: p.loaded.project_dir,
            graph: p.graph,
        },
        state: ProjectState::new(&state_root(), &name),
        record,
        tree: p.loaded.tree,
    })
}

/// The project's name for verbs that can work without the file (`ps`, `logs`, `down`): from
/// the file when it loads, else `-p`, else the state of the only project whose directory this is.
pub fn name_only(g: &Global) -> anyhow::Result<(String, Option<Loaded>)> {
    // Their containers exist already: no service's env files are needed.
    let opts = crate::spec::LoadOptions {
        env_for: Some(Vec::new()),
        ..g.load_options()
    };
    name_from(g, load_with(g, opts))
}

/// As `name_only`, without the schema check: for `down`, which takes from the file only its
/// name and the order of its services (the check was a third of its start-up at 50 services).
pub fn name_only_unchecked(g: &Global) -> anyhow::Result<(String, Option<Loaded>)> {
    let opts = crate::spec::LoadOptions {
        skip_schema: true,
        env_for: Some(Vec::new()),
        ..g.load_options()
    };
    name_from(g, load_with(g, opts))
}

fn name_from(
    g: &Global,
    loaded: anyhow::Result<Loaded>,
) -> anyhow::Result<(String, Option<Loaded>)> {
    match loaded {
        Ok(l) => Ok((l.record.name.clone(), Some(l))),
        Err(e) => {
            if let Some(n) = &g.project_name {
                return Ok((n.clone(), None));
            }
            let cwd = std::env::current_dir().unwrap_or_default();
            let mine: Vec<ProjectState> = crate::state::projects(&state_root())
                .into_iter()
                .filter(|s| s.record().is_ok_and(|r| r.working_dir == cwd))
                .collect();
            match &mine[..] {
                [one] => Ok((one.name.clone(), None)),
                _ => Err(e),
            }
        }
    }
}

/// Stops the project's supervisor, if one runs (it leaves the containers as they are), so
/// this command can take the project's lock.
pub fn stop_supervisor(st: &ProjectState) {
    let Some(pid) = st.supervisor() else { return };
    let p = nix::unistd::Pid::from_raw(pid);
    // A pidfd says the moment it has exited (polling the pid file cost 10 ms a `down`).
    let pidfd = rustix::process::Pid::from_raw(pid)
        .and_then(|r| rustix::process::pidfd_open(r, rustix::process::PidfdFlags::empty()).ok());
    let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut killed = false;
    while st.supervisor().is_some() {
        let now = Instant::now();
        if now >= deadline && !killed {
            let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
            killed = true;
        }
        match &pidfd {
            Some(fd) => {
                use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
                let left = deadline
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(10));
                let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
                let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
                if poll(&mut fds, PollTimeout::from(ms)).unwrap_or(0) > 0 {
                    // Exited (it clears its pid file as it goes; a killed one could not).
                    break;
                }
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    st.clear_supervisor();
}

/// How progress is shown (`--progress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Progress {
    #[default]
    Auto,
    Tty,
    Plain,
    Quiet,
}

fn word(p: &Phase) -> String {
    match p {
        Phase::Waiting(d) => format!("Waiting for {d}"),
        Phase::Stopping => "Stopping".into(),
        Phase::Stopped => "Stopped".into(),
        Phase::Removing => "Removing".into(),
        Phase::Removed => "Removed".into(),
        Phase::Creating => "Creating".into(),
        Phase::Created => "Created".into(),
        Phase::Starting => "Starting".into(),
        Phase::Started => "Started".into(),
        Phase::Running => "Running".into(),
        Phase::WaitingHealthy => "Waiting healthy".into(),
        Phase::Healthy => "Healthy".into(),
        Phase::Exited(c) => format!("Exited ({c})"),
        Phase::Failed(m) => format!("Error: {m}"),
    }
}

fn done(p: &Phase) -> bool {
    matches!(
        p,
        Phase::Stopped
            | Phase::Removed
            | Phase::Started
            | Phase::Running
            | Phase::Healthy
            | Phase::Exited(0)
            | Phase::Created
    )
}

/// A progress display: one line per container with its phase and elapsed time (indicatif on
/// a terminal, plain lines otherwise).
pub struct Display {
    pub sink: Sink,
    bars: Option<Arc<Mutex<Bars>>>,
}

struct Bars {
    multi: indicatif::MultiProgress,
    lines: std::collections::BTreeMap<String, (indicatif::ProgressBar, Instant)>,
}

impl Display {
    pub fn new(mode: Progress) -> Display {
        let tty = match mode {
            Progress::Auto => std::io::stderr().is_terminal(),
            Progress::Tty => true,
            Progress::Plain | Progress::Quiet => false,
        };
        if mode == Progress::Quiet {
            return Display {
                sink: Arc::new(|_| {}),
                bars: None,
            };
        }
        if !tty {
            return Display {
                sink: Arc::new(|e: Event| {
                    let who = if e.container.is_empty() {
                        format!("Service {}", e.service)
                    } else {
                        format!("Container {}", e.container)
                    };
                    eprintln!(" {who}  {}", word(&e.phase));
                }),
                bars: None,
            };
        }
        let bars = Arc::new(Mutex::new(Bars {
            multi: indicatif::MultiProgress::with_draw_target(
                indicatif::ProgressDrawTarget::stderr(),
            ),
            lines: Default::default(),
        }));
        let b = bars.clone();
        let sink: Sink = Arc::new(move |e: Event| {
            let mut g = b.lock().unwrap_or_else(|e| e.into_inner());
            let key = if e.container.is_empty() {
                e.service.clone()
            } else {
                e.container.clone()
            };
            let label = if e.container.is_empty() {
                format!("Service {}", e.service)
            } else {
                format!("Container {}", e.container)
            };
            let multi = g.multi.clone();
            let (bar, t0) = g
                .lines
                .entry(key)
                .or_insert_with(|| {
                    let bar = multi.add(indicatif::ProgressBar::new_spinner());
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(" {spinner} {prefix:<40} {msg}")
                            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                    );
                    bar.enable_steady_tick(Duration::from_millis(100));
                    (bar, Instant::now())
                })
                .clone();
            bar.set_prefix(label);
            let secs = t0.elapsed().as_secs_f64();
            bar.set_message(format!("{}  {secs:.1}s", word(&e.phase)));
            if done(&e.phase) {
                bar.set_style(
                    indicatif::ProgressStyle::with_template(" ✔ {prefix:<40} {msg}")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                );
                bar.tick();
            } else if matches!(e.phase, Phase::Failed(_) | Phase::Exited(_)) {
                bar.set_style(
                    indicatif::ProgressStyle::with_template(" ✘ {prefix:<40} {msg}")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                );
                bar.tick();
            }
        });
        Display {
            sink,
            bars: Some(bars),
        }
    }

    /// Stops the spinners and leaves the last state of every line on screen.
    pub fn finish(&self) {
        if let Some(b) = &self.bars {
            let g = b.lock().unwrap_or_else(|e| e.into_inner());
            for (bar, _) in g.lines.values() {
                bar.disable_steady_tick();
                bar.abandon();
            }
        }
    }
}
