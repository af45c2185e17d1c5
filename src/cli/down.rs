//! `berth down`: stop the supervisor, then stop and remove every container of the project
//! (dependents first), and the project's state. Nothing of another project is touched.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::bail;
use clap::Args;

use super::Global;
use super::project::{Display, Progress, name_only_unchecked, runtime, stop_supervisor, tokio};
use crate::plan::State;
use crate::reconcile::{Options, Target, teardown};
use crate::runtime::Runtime;
use crate::state::ProjectState;

#[derive(Debug, Args)]
pub struct DownArgs {
    /// Also remove the project's named and anonymous volumes and its private disks
    #[arg(short, long)]
    pub volumes: bool,
    /// Stop grace period in seconds, instead of each service's stop_grace_period
    #[arg(short, long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// Accepted for Compose compatibility: berth removes every container the project made,
    /// orphans included
    #[arg(long)]
    pub remove_orphans: bool,
    /// Progress output
    #[arg(long, value_enum, default_value_t = Progress::Auto)]
    pub progress: Progress,
}

pub fn run(g: &Global, a: &DownArgs) -> anyhow::Result<i32> {
    let (name, loaded) = name_only_unchecked(g)?;
    if !nix::unistd::Uid::effective().is_root() {
        bail!("berth down needs root, as berth up does");
    }
    let st = ProjectState::new(&super::ctx::state_root(), &name);
    let rt = runtime()?;
    let tk = tokio()?;
    stop_supervisor(&st);
    let lock = st.lock(Duration::from_secs(60))?;
    // The graph orders the stops; without a file (it was deleted), everything goes at once.
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
    let containers = tk.block_on(rt.observe(&name))?.containers;
    let display = Display::new(a.progress);
    let opts = Options {
        timeout: a.timeout.map(Duration::from_secs),
        ..Options::default()
    };
    // The project's networks are taken down as soon as their containers have exited, while the
    // rest of the removal goes on (see `net::retire`): a pidfd of each running one, from now.
    // With `-t 0` they are killed at once, with no time to use a network: no wait then.
    let killed = a.timeout == Some(0);
    let leaving: Vec<crate::net::Leaving> = containers
        .iter()
        .map(|c| {
            let running = !killed && matches!(c.state, State::Running | State::Paused);
            let fd = c
                .pid
                .filter(|_| running)
                .and_then(rustix::process::Pid::from_raw)
                .and_then(|p| {
                    rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
                });
            (c.name.clone(), fd)
        })
        .collect();
    let stopped = Arc::new(AtomicBool::new(false));
    let retiring = {
        let (root, name, stopped) = (super::ctx::state_root(), name.clone(), stopped.clone());
        std::thread::spawn(move || crate::net::retire(&root, &name, leaving, &stopped))
    };
    let failures = tk.block_on(teardown(
        rt.clone(),
        Arc::new(target),
        containers,
        true,
        opts,
        display.sink.clone(),
    ));
    stopped.store(true, Ordering::Release);
    display.finish();
    for f in &failures {
        eprintln!("berth: {f}");
    }
    let retired = match retiring.join() {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            eprintln!("berth: {e}");
            return Ok(1);
        }
        Err(_) => bail!("taking the project's networks down failed (the thread panicked)"),
    };
    if failures.is_empty() {
        // The project's networks go once no container is on them.
        if let Err(e) = crate::net::prune(&super::ctx::state_root(), &name, &retired) {
            eprintln!("berth: {e}");
            return Ok(1);
        }
        if a.volumes {
            let root = super::ctx::state_root();
            let gone = crate::disk::remove_project_volumes(&root, &name).and_then(|v| {
                let mut d = crate::disk::private::remove_project(&root, &name)?;
                d.extend(crate::disk::remove_project_shared(&root, &name)?);
                Ok((v, d))
            });
            match gone {
                Ok((volumes, disks)) => {
                    if a.progress != Progress::Quiet {
                        for v in volumes {
                            eprintln!(" Volume {v}  Removed");
                        }
                        for d in disks {
                            eprintln!(" Disk {d}  Removed");
                        }
                    }
                }
                Err(e) => {
                    eprintln!("berth: {e}");
                    return Ok(1);
                }
            }
        }
        drop(lock);
        st.remove()?;
        Ok(0)
    } else {
        Ok(1)
    }
}
