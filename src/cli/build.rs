//! `berth build [SERVICE...]`: builds the images of the services with a `build:` key, with
//! berth's own builder (each `RUN` a berth container, each step a cached layer in the store).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;

use super::Global;
use super::ctx::Engine as LinuxRuntime;
use super::project::{Progress, load, runtime};
use crate::build::exec::{BuildEvent, BuildOptions, build};
use crate::spec::model::Project;

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Services to build (all with a `build:` key when none is named)
    pub services: Vec<String>,
    /// Run every step, ignoring the cache
    #[arg(long)]
    pub no_cache: bool,
    /// Set a build argument (KEY=VALUE, or KEY to take it from this shell)
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,
    /// Print only the image ids
    #[arg(short, long)]
    pub quiet: bool,
    /// Progress output
    #[arg(long, value_enum, default_value_t = Progress::Auto)]
    pub progress: Progress,
}

pub fn run(g: &Global, a: &BuildArgs) -> anyhow::Result<i32> {
    let l = load(g)?;
    if !nix::unistd::Uid::effective().is_root() {
        bail!("berth build needs root: each RUN step is a container");
    }
    let rt = runtime()?;
    let names: Vec<String> = l
        .target
        .project
        .services
        .iter()
        .filter(|(n, s)| s.build.is_some() && (a.services.is_empty() || a.services.contains(n)))
        .map(|(n, _)| n.clone())
        .collect();
    for s in &a.services {
        if !l.target.project.services.contains_key(s) {
            bail!("no such service: {s}");
        }
        if !names.contains(s) {
            bail!("service {s} has no `build:` key: there is nothing to build");
        }
    }
    let mut extra = BTreeMap::new();
    for kv in &a.build_args {
        match kv.split_once('=') {
            Some((k, v)) => extra.insert(k.to_string(), v.to_string()),
            None => std::env::var(kv)
                .ok()
                .and_then(|v| extra.insert(kv.clone(), v)),
        };
    }
    let mode = if a.quiet { Progress::Quiet } else { a.progress };
    for n in &names {
        let id = build_service(
            &rt,
            &l.target.project,
            &l.target.dir,
            n,
            &extra,
            a.no_cache,
            mode,
        )?;
        if a.quiet {
            println!("{id}");
        }
    }
    Ok(0)
}

/// Builds one service's image and tags it with the service's image name (and `build.tags`).
pub fn build_service(
    rt: &Arc<LinuxRuntime>,
    project: &Project,
    dir: &std::path::Path,
    service: &str,
    extra_args: &BTreeMap<String, String>,
    no_cache: bool,
    mode: Progress,
) -> anyhow::Result<String> {
    let svc = &project.services[service];
    let Some(b) = &svc.build else {
        bail!("service {service} has no `build:` key");
    };
    let context = dir.join(&b.context);
    let (dockerfile_name, dockerfile) = match &b.dockerfile_inline {
        Some(text) => (format!("{service}: dockerfile_inline"), text.clone()),
        None => {
            let f = context.join(b.dockerfile.as_deref().unwrap_or("Dockerfile"));
            let text = std::fs::read_to_string(&f)
                .with_context(|| format!("service {service}: reading {}", f.display()))?;
            (f.display().to_string(), text)
        }
    };
    let mut args: BTreeMap<String, String> = b
        .args
        .iter()
        .filter_map(|(k, v)| {
            v.clone()
                .or_else(|| std::env::var(k).ok())
                .map(|v| (k.clone(), v))
        })
        .collect();
    args.extend(extra_args.clone());
    let mut tags: Vec<String> = svc.image.iter().cloned().collect();
    tags.extend(b.tags.iter().cloned());
    let opts = BuildOptions {
        context,
        dockerfile_name,
        dockerfile,
        args,
        target: b.target.clone(),
        tags,
        labels: b.labels.clone(),
        network: b.network.clone(),
        no_cache: no_cache || b.no_cache == Some(true),
        pull: b.pull == Some(true),
        shm_size: b.shm_size,
        extra_hosts: b.extra_hosts.clone(),
    };
    let plain = match mode {
        Progress::Quiet => None,
        Progress::Auto if std::io::stderr().is_terminal() => Some(false),
        Progress::Tty => Some(false),
        _ => Some(true),
    };
    if plain.is_some() {
        eprintln!(" Building {service}");
    }
    let show = |e: BuildEvent| {
        let Some(plain) = plain else { return };
        match e {
            BuildEvent::Step { n, total, text } => eprintln!("#{n} [{service} {n}/{total}] {text}"),
            BuildEvent::Cached { n } => eprintln!("#{n} CACHED"),
            BuildEvent::Done { n, secs } => eprintln!("#{n} DONE {secs:.1}s"),
            BuildEvent::Output { n, line } if plain => eprintln!("#{n} {line}"),
            BuildEvent::Output { .. } => {}
        }
    };
    let root = super::ctx::state_root();
    let built =
        build(rt, &root, &opts, &show).map_err(|e| anyhow::anyhow!("service {service}: {e}"))?;
    if plain.is_some() {
        eprintln!(
            " Built {service} as {} ({}, {} of {} steps cached)",
            svc.image.as_deref().unwrap_or(&built.id),
            &built.id[..built.id.len().min(19)],
            built.cached,
            built.steps
        );
    }
    Ok(built.id)
}
