//! `berth run`: a one-off container of a service, with its command (and optionally
//! environment, user, working directory) replaced; its output streams to the terminal and its
//! exit status becomes berth's. Plans leave one-off containers alone; `--rm` removes it after.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use super::Global;
use super::project::{Display, Progress, load_for, runtime, tokio};
use crate::plan::{State, diff};
use crate::reconcile::{Options, apply};
use crate::runtime::Inspect;
use crate::runtime::LOG_FILE;
use crate::runtime::{ContainerSpec, Runtime};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Remove the container when it exits
    #[arg(long)]
    pub rm: bool,
    /// Run in the background; print the container's name
    #[arg(short, long)]
    pub detach: bool,
    /// Set an environment variable (KEY=VALUE, or KEY to take it from this shell)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Don't start the services it depends on
    #[arg(long)]
    pub no_deps: bool,
    /// The container's name
    #[arg(long)]
    pub name: Option<String>,
    /// Run as this user (name or uid[:gid])
    #[arg(short, long)]
    pub user: Option<String>,
    /// Working directory inside the container
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// Replace the image's entrypoint
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Accepted for Compose compatibility (no terminal is allocated; stdin is not attached yet)
    #[arg(short = 'T', long = "no-TTY")]
    pub no_tty: bool,
    /// Accepted for Compose compatibility (stdin is not attached yet)
    #[arg(short = 'i', long)]
    pub interactive: bool,
    pub service: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

fn suffix() -> String {
    let mut b = [0u8; 4];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn run(g: &Global, a: &RunArgs) -> anyhow::Result<i32> {
    let l = load_for(g, std::slice::from_ref(&a.service))?;
    let Some(base) = l.target.project.services.get(&a.service).cloned() else {
        bail!("no such service: {}", a.service);
    };
    if !nix::unistd::Uid::effective().is_root() {
        bail!("berth run needs root, as berth up does");
    }
    let rt = runtime()?;
    let tk = tokio()?;
    let project = l.target.project.name.clone();
    let target = Arc::new(l.target);

    // Its dependencies first, as `up` would bring them (unless --no-deps).
    if !a.no_deps {
        let deps = target
            .graph
            .with_dependencies(std::slice::from_ref(&a.service));
        let observed = tk.block_on(rt.observe(&project))?;
        let mut plan = diff(&target.project, &target.dir, &target.graph, &observed);
        plan.actions
            .retain(|x| x.service() != a.service && deps.contains(x.service()));
        if !plan.is_empty() {
            let display = Display::new(Progress::Auto);
            let f = tk.block_on(apply(
                rt.clone(),
                target.clone(),
                &plan,
                &observed.containers,
                Options::default(),
                display.sink.clone(),
            ));
            display.finish();
            if let Some(f) = f.first() {
                bail!("a dependency did not start: {f}");
            }
        }
    }

    let mut def = base;
    def.container_name = None;
    def.restart = None;
    def.scale = None;
    if !a.command.is_empty() {
        def.command = Some(a.command.clone());
    }
    if let Some(ep) = &a.entrypoint {
        def.entrypoint = Some(vec![ep.clone()]);
    }
    if let Some(u) = &a.user {
        def.user = Some(u.clone());
    }
    if let Some(w) = &a.workdir {
        def.working_dir = Some(w.clone());
    }
    for e in &a.env {
        let (k, v) = match e.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (e.clone(), std::env::var(e).ok()),
        };
        def.environment.insert(k, v);
    }
    let name = a
        .name
        .clone()
        .unwrap_or_else(|| format!("{project}-{}-run-{}", a.service, suffix()));
    let spec = ContainerSpec {
        project: project.clone(),
        service: a.service.clone(),
        index: 0,
        name: name.clone(),
        config_hash: String::new(),
        definition: def,
        oneoff: true,
        networks: crate::net::attachments(&target.project, &a.service)?,
        mounts: crate::disk::mounts(&target.project, &a.service)?,
        granted: crate::disk::secrets::granted(&target.project, &a.service, &target.dir)?,
    };
    tk.block_on(rt.create(&spec))?;
    if let Err(e) = tk.block_on(rt.start(&name)) {
        let _ = tk.block_on(rt.remove(&name));
        return Err(e.into());
    }
    if a.detach {
        println!("{name}");
        return Ok(0);
    }
    let info = rt.info(&name)?;
    let log = info.dir.join(LOG_FILE);
    let code = tk.block_on(async {
        let mut offset = 0usize;
        let mut pending = String::new();
        let mut pump = |last: bool| {
            let Ok(bytes) = std::fs::read(&log) else {
                return;
            };
            if bytes.len() < offset {
                offset = 0;
            }
            pending.push_str(&String::from_utf8_lossy(&bytes[offset..]));
            offset = bytes.len();
            let upto = if last {
                pending.len()
            } else {
                pending.rfind('\n').map_or(0, |i| i + 1)
            };
            let done: String = pending.drain(..upto).collect();
            let mut out = std::io::stdout().lock();
            for l in done.lines() {
                if let Ok(r) = serde_json::from_str::<serde_json::Value>(l)
                    && let Some(text) = r["log"].as_str()
                {
                    let _ = out.write_all(text.as_bytes());
                }
            }
            let _ = out.flush();
        };
        let waiting = rt.wait(&name);
        tokio::pin!(waiting);
        let state = loop {
            tokio::select! {
                s = &mut waiting => break s,
                _ = tokio::time::sleep(Duration::from_millis(50)) => pump(false),
            }
        };
        pump(true);
        state
    });
    let code = match code.context("waiting for the container")? {
        State::Exited(c) => c,
        State::OomKilled => 137,
        _ => 0,
    };
    if a.rm {
        tk.block_on(rt.remove(&name))?;
    }
    Ok(code)
}
