//! The verbs that act on existing containers: `start`, `stop`, `restart`, `kill`, `rm`,
//! `pause`, `unpause`, `top`, `wait`, and `scale`.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use clap::Args;

use super::Global;
use super::ctx::Engine as LinuxRuntime;
use super::project::{Display, Progress, name_only, runtime, tokio};
use crate::plan::{Action, ObservedContainer, Plan, State};
use crate::reconcile::{Options, Target, apply, teardown};
use crate::runtime::Inspect;
use crate::runtime::Runtime;
use crate::state::ProjectState;

#[derive(Debug, Args)]
pub struct StopArgs {
    /// Grace period in seconds before SIGKILL
    #[arg(short, long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    #[arg(long, value_enum, default_value_t = Progress::Auto)]
    pub progress: Progress,
    pub services: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ServicesArgs {
    #[arg(long, value_enum, default_value_t = Progress::Auto)]
    pub progress: Progress,
    pub services: Vec<String>,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    /// The signal (name or number)
    #[arg(short, long, default_value = "SIGKILL")]
    pub signal: String,
    pub services: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Don't ask
    #[arg(short, long)]
    pub force: bool,
    /// Stop the containers first
    #[arg(short, long)]
    pub stop: bool,
    /// Also anonymous volumes (arrives with the disks)
    #[arg(short, long)]
    pub volumes: bool,
    pub services: Vec<String>,
}

#[derive(Debug, Args)]
pub struct NamesArgs {
    pub services: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// SERVICE=N ...
    #[arg(required = true)]
    pub scales: Vec<String>,
    /// Don't start the services the scaled ones depend on
    #[arg(long)]
    pub no_deps: bool,
}

/// The project (with its graph when the file loads) and its containers of `services` (all
/// when empty). One-off containers are included only when `oneoff`.
pub(super) struct Selection {
    pub(super) name: String,
    pub(super) target: Arc<Target>,
    pub(super) containers: Vec<ObservedContainer>,
    pub(super) rt: Arc<LinuxRuntime>,
    pub(super) tk: tokio::runtime::Runtime,
    pub(super) state: ProjectState,
}

pub(super) fn select(g: &Global, services: &[String]) -> anyhow::Result<Selection> {
    let (name, loaded) = name_only(g)?;
    let rt = runtime()?;
    let tk = tokio()?;
    let observed = tk.block_on(rt.observe(&name))?;
    for s in services {
        let known = loaded
            .as_ref()
            .is_some_and(|l| l.target.project.services.contains_key(s))
            || observed.containers.iter().any(|c| &c.service == s);
        if !known {
            bail!("no such service: {s}");
        }
    }
    let containers: Vec<ObservedContainer> = observed
        .containers
        .into_iter()
        .filter(|c| services.is_empty() || services.contains(&c.service))
        .collect();
    let target = match loaded {
        Some(l) => l.target,
        None => {
            let project = crate::spec::model::Project {
                name: name.clone(),
                ..Default::default()
            };
            let graph = crate::graph::Graph::new(&project)
                .map_err(|_| anyhow::anyhow!("empty project graph"))?;
            Target {
                project,
                dir: std::env::current_dir().unwrap_or_default(),
                graph,
            }
        }
    };
    let state = ProjectState::new(&super::ctx::state_root(), &name);
    Ok(Selection {
        name,
        target: Arc::new(target),
        containers,
        rt,
        tk,
        state,
    })
}

fn report(failures: &[crate::reconcile::Failure]) -> i32 {
    for f in failures {
        eprintln!("berth: {f}");
    }
    i32::from(!failures.is_empty())
}

fn stop_selected(s: &Selection, timeout: Option<u64>, progress: Progress) -> i32 {
    // Marked first, so the supervisor does not restart them by policy.
    for c in &s.containers {
        let _ = s.state.set_stopped(&c.name, true);
    }
    let display = Display::new(progress);
    let opts = Options {
        timeout: timeout.map(Duration::from_secs),
        ..Options::default()
    };
    let running: Vec<ObservedContainer> = s
        .containers
        .iter()
        .filter(|c| matches!(c.state, State::Running | State::Paused))
        .cloned()
        .collect();
    let f = s.tk.block_on(teardown(
        s.rt.clone(),
        s.target.clone(),
        running,
        false,
        opts,
        display.sink.clone(),
    ));
    display.finish();
    report(&f)
}

fn start_selected(s: &Selection, progress: Progress) -> i32 {
    for c in &s.containers {
        let _ = s.state.set_stopped(&c.name, false);
    }
    let plan = Plan {
        actions: s
            .containers
            .iter()
            .filter(|c| !matches!(c.state, State::Running | State::Paused))
            .map(|c| Action::Start {
                service: c.service.clone(),
                index: c.index,
                name: c.name.clone(),
            })
            .collect(),
    };
    let display = Display::new(progress);
    let f = s.tk.block_on(apply(
        s.rt.clone(),
        s.target.clone(),
        &plan,
        &s.containers,
        Options::default(),
        display.sink.clone(),
    ));
    display.finish();
    report(&f)
}

pub fn stop(g: &Global, a: &StopArgs) -> anyhow::Result<i32> {
    let s = select(g, &a.services)?;
    Ok(stop_selected(&s, a.timeout, a.progress))
}

pub fn start(g: &Global, a: &ServicesArgs) -> anyhow::Result<i32> {
    let s = select(g, &a.services)?;
    if s.containers.is_empty() {
        bail!(
            "project {} has no containers to start; `berth up` creates them",
            s.name
        );
    }
    Ok(start_selected(&s, a.progress))
}

pub fn restart(g: &Global, a: &StopArgs) -> anyhow::Result<i32> {
    let s = select(g, &a.services)?;
    let code = stop_selected(&s, a.timeout, a.progress);
    if code != 0 {
        return Ok(code);
    }
    let s = select(g, &a.services)?;
    Ok(start_selected(&s, a.progress))
}

fn signal(name: &str) -> anyhow::Result<nix::sys::signal::Signal> {
    use std::str::FromStr;
    if let Ok(n) = name.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n)
            .map_err(|_| anyhow::anyhow!("unknown signal {name}"));
    }
    let up = name.to_ascii_uppercase();
    let full = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    nix::sys::signal::Signal::from_str(&full).map_err(|_| anyhow::anyhow!("unknown signal {name}"))
}

pub fn kill(g: &Global, a: &KillArgs) -> anyhow::Result<i32> {
    let sig = signal(&a.signal)?;
    let s = select(g, &a.services)?;
    let mut code = 0;
    for c in s.containers.iter().filter(|c| c.state == State::Running) {
        match s.rt.signal(&c.name, sig) {
            Ok(()) => eprintln!(" Container {}  Killed ({sig})", c.name),
            Err(e) => {
                eprintln!("berth: {e}");
                code = 1;
            }
        }
    }
    Ok(code)
}

pub fn rm(g: &Global, a: &RmArgs) -> anyhow::Result<i32> {
    let mut s = select(g, &a.services)?;
    if a.stop {
        let code = stop_selected(&s, None, Progress::Auto);
        if code != 0 {
            return Ok(code);
        }
        s = select(g, &a.services)?;
    }
    let (running, stopped): (Vec<_>, Vec<_>) = s
        .containers
        .iter()
        .cloned()
        .partition(|c| matches!(c.state, State::Running | State::Paused));
    for c in &running {
        eprintln!(
            "berth: {} is running; `berth stop` it first, or `berth rm -s`",
            c.name
        );
    }
    if stopped.is_empty() {
        eprintln!("No stopped containers");
        return Ok(i32::from(!running.is_empty()));
    }
    let names: Vec<&str> = stopped.iter().map(|c| c.name.as_str()).collect();
    if !a.force && std::io::stdin().is_terminal() {
        eprint!("Going to remove {}\nAre you sure? [yN] ", names.join(", "));
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        if !matches!(line.trim(), "y" | "Y" | "yes") {
            return Ok(0);
        }
    }
    let display = Display::new(Progress::Auto);
    let f = s.tk.block_on(teardown(
        s.rt.clone(),
        s.target.clone(),
        stopped.clone(),
        true,
        Options::default(),
        display.sink.clone(),
    ));
    display.finish();
    for c in &stopped {
        let _ = s.state.set_stopped(&c.name, false);
    }
    Ok(report(&f).max(i32::from(!running.is_empty())))
}

pub fn pause(g: &Global, a: &NamesArgs, frozen: bool) -> anyhow::Result<i32> {
    let s = select(g, &a.services)?;
    let mut code = 0;
    let want = if frozen {
        State::Running
    } else {
        State::Paused
    };
    for c in s.containers.iter().filter(|c| c.state == want) {
        match s.rt.freeze(&c.name, frozen) {
            Ok(()) => eprintln!(
                " Container {}  {}",
                c.name,
                if frozen { "Paused" } else { "Unpaused" }
            ),
            Err(e) => {
                eprintln!("berth: {e}");
                code = 1;
            }
        }
    }
    Ok(code)
}

/// One process of a container, as `top` shows it.
fn proc_line(pid: u32) -> Option<(u32, u32, u32, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let ppid: u32 = rest.split(' ').nth(1)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmd = String::from_utf8_lossy(&cmd)
        .trim_end_matches('\0')
        .replace('\0', " ");
    Some((uid, pid, ppid, cmd))
}

pub fn top(g: &Global, a: &NamesArgs) -> anyhow::Result<i32> {
    let s = select(g, &a.services)?;
    for c in s
        .containers
        .iter()
        .filter(|c| matches!(c.state, State::Running | State::Paused))
    {
        println!("{}", c.name);
        println!("{:<8} {:<8} {:<8} CMD", "UID", "PID", "PPID");
        let mut procs = s.rt.processes(&c.name)?;
        procs.sort_unstable();
        for p in procs {
            if let Some((uid, pid, ppid, cmd)) = proc_line(p) {
                println!("{uid:<8} {pid:<8} {ppid:<8} {cmd}");
            }
        }
        println!();
    }
    Ok(0)
}

pub fn wait(g: &Global, a: &NamesArgs) -> anyhow::Result<i32> {
    let s = select(g, &a.services)?;
    let mut first = None;
    for c in &s.containers {
        let state = s.tk.block_on(s.rt.wait(&c.name))?;
        let code = match state {
            State::Exited(c) => c,
            State::OomKilled => 137,
            _ => 0,
        };
        println!("{code}");
        first.get_or_insert(code);
    }
    Ok(first.unwrap_or(0))
}

pub fn scale(g: &Global, a: &ScaleArgs) -> anyhow::Result<i32> {
    let services: Vec<String> = a
        .scales
        .iter()
        .map(|s| s.split_once('=').map_or(s.clone(), |(n, _)| n.to_string()))
        .collect();
    super::up::run(
        g,
        &super::up::UpArgs {
            detach: true,
            no_recreate: true,
            no_deps: a.no_deps,
            scale: a.scales.clone(),
            services,
            ..Default::default()
        },
    )
}
