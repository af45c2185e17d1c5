//! `berth config`: the resolved, normalized project, like `docker compose config`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::Global;
use crate::spec;
use crate::support::Support;

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Output format
    #[arg(long, default_value = "yaml", value_parser = ["yaml", "json"])]
    format: String,
    /// Only validate; the exit status tells
    #[arg(short, long)]
    quiet: bool,
    /// Print the service names, one per line
    #[arg(long)]
    services: bool,
    /// Print the volume names, one per line
    #[arg(long)]
    volumes: bool,
    /// Print the network names, one per line
    #[arg(long)]
    networks: bool,
    /// Print every profile the file names, one per line
    #[arg(long = "profiles", id = "list_profiles")]
    list_profiles: bool,
    /// Print the image of each service, one per line
    #[arg(long)]
    images: bool,
    /// Print the config hash of SERVICE (`*` for every service)
    #[arg(long, value_name = "SERVICE")]
    hash: Option<String>,
    /// List the keys this project uses that berth accepts but does not act on (yet)
    #[arg(long)]
    unsupported: bool,
    /// Print the file without interpolating `${VARS}`
    #[arg(long)]
    no_interpolate: bool,
    /// Write the output to FILE instead of standard output
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

pub fn run(g: &Global, a: &ConfigArgs) -> anyhow::Result<i32> {
    let mut opts = g.load_options();
    opts.no_interpolate = a.no_interpolate;
    let listing = a.services
        || a.volumes
        || a.networks
        || a.list_profiles
        || a.images
        || a.hash.is_some()
        || a.unsupported;
    if a.no_interpolate && !listing {
        // The file as written: a `${VAR}` is neither typed nor checked beyond the schema.
        let v = spec::load_uninterpolated(&opts)?;
        if a.quiet {
            return Ok(0);
        }
        let out = if a.format == "json" {
            serde_json::to_string_pretty(&v)? + "\n"
        } else {
            serde_yaml::to_string(&v)?
        };
        return emit(&out, a.output.as_deref());
    }
    // `--hash A,B`: only their env files (and their dependencies') need be there.
    if let Some(which) = a.hash.as_ref().filter(|w| *w != "*") {
        opts.env_for = Some(which.split(',').map(|n| n.trim().to_string()).collect());
    }
    let p = crate::load_project(&opts)?;
    for w in &p.loaded.warnings {
        eprintln!("berth: warning: {w}");
    }
    if a.quiet {
        return Ok(0);
    }
    let project = &p.loaded.project;
    let mut out = String::new();
    if a.services {
        for s in p.graph.start_order() {
            out.push_str(&s);
            out.push('\n');
        }
    } else if a.volumes {
        for v in project.volumes.keys() {
            out.push_str(&format!("{v}\n"));
        }
    } else if a.networks {
        for n in project.networks.keys() {
            out.push_str(&format!("{n}\n"));
        }
    } else if a.list_profiles {
        for pr in &p.loaded.all_profiles {
            out.push_str(&format!("{pr}\n"));
        }
    } else if a.images {
        for (name, s) in &project.services {
            let img = s
                .image
                .clone()
                .unwrap_or_else(|| format!("{}-{name}", project.name));
            out.push_str(&format!("{img}\n"));
        }
    } else if let Some(which) = &a.hash {
        let names: Vec<&String> = if which == "*" {
            project.services.keys().collect()
        } else {
            let mut v = Vec::new();
            for n in which.split(',') {
                match project.services.get_key_value(n.trim()) {
                    Some((k, _)) => v.push(k),
                    None => anyhow::bail!("no service named `{n}` in the project"),
                }
            }
            v
        };
        for n in names {
            out.push_str(&format!(
                "{n} {}\n",
                crate::plan::service_hash(project, n, &p.loaded.project_dir)
            ));
        }
    } else if a.unsupported {
        for (path, s) in crate::support::unsupported(project) {
            let what = match s {
                Support::Planned(part) => {
                    format!("accepted, not acted on yet (arrives with {part})")
                }
                Support::Ignored(why) => format!("accepted and ignored: {why}"),
                Support::Acted => continue,
            };
            out.push_str(&format!("{path}: {what}\n"));
        }
    } else if a.format == "json" {
        out = serde_json::to_string_pretty(&spec::rendered(project))?;
        out.push('\n');
    } else {
        out = spec::to_yaml(project);
    }
    emit(&out, a.output.as_deref())
}

/// Writes `config`'s output to `-o FILE`, or to standard output.
fn emit(out: &str, file: Option<&std::path::Path>) -> anyhow::Result<i32> {
    match file {
        Some(f) => {
            std::fs::write(f, out).with_context(|| format!("cannot write {}", f.display()))?
        }
        None => std::io::stdout().write_all(out.as_bytes())?,
    }
    Ok(0)
}
