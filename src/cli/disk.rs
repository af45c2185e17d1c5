//! `berth disk`: the private disks and volumes under the state root (`ls`, `rm`).

use anyhow::bail;
use clap::{Args, Subcommand};

use super::ctx::state_root;
use super::stats::human;

#[derive(Debug, Args)]
pub struct DiskArgs {
    #[command(subcommand)]
    pub verb: DiskVerb,
}

#[derive(Debug, Subcommand)]
pub enum DiskVerb {
    /// List private disks and volumes: size, use on the host, and who has them
    Ls {
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
    },
    /// Remove private disks or volumes, with their data (refused while a container has them)
    Rm { names: Vec<String> },
    /// Take a shared disk's baseline from its seed again and recreate the services using it
    Update { name: String },
}

pub fn run(g: &super::Global, a: &DiskArgs) -> anyhow::Result<i32> {
    let root = state_root();
    match &a.verb {
        DiskVerb::Update { name } => {
            let l = super::project::load(g)?;
            let p = &l.target.project;
            let key = p
                .disks
                .iter()
                .find(|(k, d)| {
                    *k == name
                        || d.name.as_deref() == Some(name)
                        || format!("{}_{k}", p.name) == *name
                })
                .map(|(k, _)| k.clone())
                .ok_or_else(|| anyhow::anyhow!("no disk {name} in project {}", p.name))?;
            let users: Vec<String> = p
                .services
                .iter()
                .filter(|(_, s)| s.disks.iter().any(|d| d.source == key))
                .map(|(n, _)| n.clone())
                .collect();
            if users.is_empty() {
                println!("no service uses disk {key}");
                return Ok(0);
            }
            let up = super::up::UpArgs {
                detach: true,
                force_recreate: true,
                no_deps: true,
                services: users,
                ..Default::default()
            };
            super::up::run(g, &up)
        }
        DiskVerb::Ls { format } => {
            let disks = crate::disk::private::list(&root);
            let volumes = crate::disk::volumes(&root);
            if format == "json" {
                for d in &disks {
                    println!(
                        "{}",
                        serde_json::json!({"Name": d.name, "Kind": "private", "Project": d.project, "Size": d.size, "OnHost": d.on_host, "Attached": d.attached})
                    );
                }
                for v in &volumes {
                    println!(
                        "{}",
                        serde_json::json!({"Name": v.name, "Kind": "volume", "Project": v.project, "OnHost": crate::disk::volume_usage(&root, &v.name)})
                    );
                }
                return Ok(0);
            }
            println!(
                "{:<32} {:<8} {:>10} {:>10}   {:<16} ATTACHED",
                "NAME", "KIND", "SIZE", "ON HOST", "PROJECT"
            );
            for d in &disks {
                println!(
                    "{:<32} {:<8} {:>10} {:>10}   {:<16} {}",
                    d.name,
                    "private",
                    human(d.size),
                    human(d.on_host),
                    d.project,
                    d.attached.as_deref().unwrap_or("-")
                );
            }
            for (name, project, on_host) in crate::disk::shared::list(&root) {
                println!(
                    "{:<32} {:<8} {:>10} {:>10}   {:<16} -",
                    name,
                    "shared",
                    "-",
                    human(on_host),
                    project
                );
            }
            for v in &volumes {
                println!(
                    "{:<32} {:<8} {:>10} {:>10}   {:<16} -",
                    v.name,
                    "volume",
                    "-",
                    human(crate::disk::volume_usage(&root, &v.name)),
                    v.project
                );
            }
            Ok(0)
        }
        DiskVerb::Rm { names } => {
            if names.is_empty() {
                bail!("berth disk rm: name the disks or volumes to remove");
            }
            let mut code = 0;
            for n in names {
                let r = if crate::disk::private::state(&root, n).is_some() {
                    crate::disk::private::remove(&root, n).map_err(anyhow::Error::from)
                } else if crate::disk::shared::list(&root)
                    .iter()
                    .any(|(d, _, _)| d == n)
                {
                    std::fs::remove_dir_all(crate::disk::private::disks_dir(&root).join(n))
                        .map_err(anyhow::Error::from)
                } else if crate::disk::volumes(&root).iter().any(|v| &v.name == n) {
                    crate::disk::remove_volume(&root, n).map_err(anyhow::Error::from)
                } else {
                    Err(anyhow::anyhow!("no disk or volume named {n}"))
                };
                match r {
                    Ok(()) => println!("{n}"),
                    Err(e) => {
                        eprintln!("berth: {e}");
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
    }
}
