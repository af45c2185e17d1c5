//! `berth image import|ls|rm|inspect|prune`, `berth images`, `berth rmi`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::ctx::Engine as LinuxRuntime;
use super::ctx::state_root;
use super::pullview::{PullView, Stream};
use crate::image::ImageInfo;
use crate::runtime::Inspect;

#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub cmd: ImageCmd,
}

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Import docker-save or OCI-layout tarballs (plain or gzip)
    Import { files: Vec<PathBuf> },
    /// List images
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Remove images (refused for an image a container uses)
    #[command(alias = "remove")]
    Rm { images: Vec<String> },
    /// Show an image's details as JSON
    Inspect { images: Vec<String> },
    /// Remove untagged images no container uses
    Prune {
        /// Remove every image no container uses, tagged or not
        #[arg(short, long)]
        all: bool,
        /// Do not ask (berth never asks; accepted as Docker's)
        #[arg(short, long)]
        force: bool,
    },
    /// Save images to a tarball (docker-save and OCI layout in one)
    Save(SaveArgs),
}

#[derive(Debug, Args)]
pub struct SaveArgs {
    /// Images (name[:tag], name@digest or id)
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Write to this file instead of standard output (`-` is standard output)
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

/// `berth save`: a tarball that `berth image import` and `docker load` read on a host with no
/// registry. Written to a temporary name and renamed, so a failed save leaves no partial file.
pub fn save(a: &SaveArgs) -> anyhow::Result<i32> {
    use std::io::IsTerminal;
    if a.images.iter().any(|i| i == "host") {
        anyhow::bail!(
            "berth save: `host` is this host's own files, not an image in the store; it cannot be saved"
        );
    }
    let rt = runtime()?;
    let to_stdout = a.output.as_deref().is_none_or(|o| o.as_os_str() == "-");
    if to_stdout {
        if std::io::stdout().is_terminal() {
            anyhow::bail!(
                "berth save: refusing to write a tarball to a terminal; use -o FILE or redirect standard output"
            );
        }
        let out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
        rt.images().save(&a.images, out)?;
        return Ok(0);
    }
    let path = a.output.clone().unwrap_or_default();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image.tar".into());
    let tmp = path.with_file_name(format!(".{name}.berth-{}", std::process::id()));
    let result = (|| -> anyhow::Result<crate::image::Saved> {
        let f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        let saved = rt.images().save(&a.images, &mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(saved)
    })();
    match result {
        Ok(s) => {
            eprintln!(
                "Saved {} to {} ({} blobs, {})",
                s.images.join(", "),
                path.display(),
                s.blobs,
                super::ctx::human(s.bytes)
            );
            Ok(0)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only image ids
    #[arg(short, long)]
    pub quiet: bool,
    /// Output format
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
}

fn runtime() -> anyhow::Result<LinuxRuntime> {
    super::ctx::open_runtime(&state_root())
}

fn short_id(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

pub fn list(a: &LsArgs) -> anyhow::Result<i32> {
    let rt = runtime()?;
    let images: Vec<ImageInfo> = rt.images().list()?;
    if a.format == "json" {
        println!("{}", serde_json::to_string_pretty(&images)?);
    } else if a.quiet {
        for i in &images {
            println!("{}", short_id(&i.id));
        }
    } else {
        println!(
            "{:<40} {:<12} {:<14} {:<22} {:>10}",
            "REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"
        );
        for i in &images {
            println!(
                "{:<40} {:<12} {:<14} {:<22} {:>10}",
                i.repository.as_deref().unwrap_or("<none>"),
                i.tag.as_deref().unwrap_or("<none>"),
                short_id(&i.id),
                i.created
                    .as_deref()
                    .map(|c| c.chars().take(19).collect::<String>())
                    .unwrap_or_default(),
                super::ctx::human(i.size)
            );
        }
    }
    Ok(0)
}

pub fn run(a: &ImageArgs) -> anyhow::Result<i32> {
    match &a.cmd {
        ImageCmd::Import { files } => {
            anyhow::ensure!(!files.is_empty(), "give the tarball(s) to import");
            let rt = runtime()?;
            for f in files {
                let imported = rt
                    .images()
                    .import(f)
                    .with_context(|| format!("importing {}", f.display()))?;
                for i in imported {
                    match (&i.repository, &i.tag) {
                        (Some(r), Some(t)) => println!("Loaded image: {r}:{t}"),
                        _ => println!("Loaded image ID: {}", i.id),
                    }
                }
            }
            Ok(0)
        }
        ImageCmd::Ls(l) => list(l),
        ImageCmd::Save(s) => save(s),
        ImageCmd::Rm { images } => remove(images),
        ImageCmd::Inspect { images } => {
            anyhow::ensure!(!images.is_empty(), "give the image(s) to inspect");
            let rt = runtime()?;
            let mut out = Vec::new();
            for r in images {
                out.push(rt.images().inspect(r)?);
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(0)
        }
        ImageCmd::Prune { all, force: _ } => {
            let rt = runtime()?;
            let used = rt.images_in_use();
            let r = rt.images().prune_images(&|id| used.contains(id), *all)?;
            for u in &r.untagged {
                println!("Untagged: {u}");
            }
            for p in &r.pruned {
                println!("Deleted: {p}");
            }
            println!(
                "Total: {} image(s), {} blob(s) and {} layer(s) freed",
                r.pruned.len(),
                r.blobs_freed,
                r.layers_freed
            );
            Ok(0)
        }
    }
}

pub fn remove(images: &[String]) -> anyhow::Result<i32> {
    anyhow::ensure!(!images.is_empty(), "give the image(s) to remove");
    let rt = runtime()?;
    let used = rt.images_in_use();
    for r in images {
        let removed = rt.images().remove(r, &|id| used.contains(id))?;
        for u in &removed.untagged {
            println!("Untagged: {u}");
        }
        if let Some(d) = &removed.deleted {
            println!("Deleted: {d}");
        }
    }
    Ok(0)
}

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// Services of the project (their images), or image references
    pub names: Vec<String>,
    /// Print nothing but errors
    #[arg(short, long)]
    pub quiet: bool,
    /// Progress output: bars per layer on a terminal, plain lines otherwise
    #[arg(long, value_enum, default_value_t = super::project::Progress::Auto)]
    pub progress: super::project::Progress,
}

/// `berth pull`: the images of the named services (all of them without names), or images
/// named directly (`berth pull 127.0.0.1:5000/app:1`).
pub fn pull(g: &super::Global, a: &PullArgs) -> anyhow::Result<i32> {
    let project = super::project::load(g).ok().map(|l| l.target.project);
    let mut refs: Vec<String> = Vec::new();
    let services = |p: &crate::spec::model::Project, names: &[String]| -> Vec<String> {
        p.services
            .iter()
            .filter(|(n, _)| names.is_empty() || names.contains(n))
            .filter_map(|(_, s)| s.image.clone())
            .filter(|i| i != "host")
            .collect()
    };
    match &project {
        Some(p) if a.names.is_empty() => refs = services(p, &[]),
        _ => {
            for n in &a.names {
                match &project {
                    Some(p) if p.services.contains_key(n) => {
                        refs.extend(services(p, std::slice::from_ref(n)))
                    }
                    _ => refs.push(n.clone()),
                }
            }
        }
    }
    refs.sort();
    refs.dedup();
    if refs.is_empty() {
        anyhow::bail!(
            "nothing to pull: name an image, or run it in a project whose services use registry images"
        );
    }
    let rt = runtime()?;
    let mut code = 0;
    let mode = if a.quiet {
        super::project::Progress::Quiet
    } else {
        a.progress
    };
    for r in &refs {
        let view = PullView::new(mode, Stream::Stdout);
        view.say(&format!("Pulling {r}"));
        match rt.images().pull(r, &|e| view.event(e)) {
            Ok(p) => view.finish(&format!(
                "{r}: {} blob(s) fetched ({}), {} already present",
                p.fetched,
                super::ctx::human(p.bytes),
                p.reused
            )),
            Err(e) => {
                view.finish("failed");
                eprintln!("berth: {e}");
                code = 1;
            }
        }
    }
    Ok(code)
}

#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// The registry (default: Docker Hub)
    pub server: Option<String>,
    #[arg(short, long)]
    pub username: Option<String>,
    /// The password (prefer --password-stdin: a command line is visible to other users;
    /// `-p` is the project here, as in every berth verb)
    #[arg(long)]
    pub password: Option<String>,
    /// Read the password from standard input
    #[arg(long)]
    pub password_stdin: bool,
}

/// `berth login`: checks the credentials with the registry and keeps them in the docker config
/// file, where Docker keeps them too.
pub fn login(a: &LoginArgs) -> anyhow::Result<i32> {
    let server = a.server.clone().unwrap_or_else(|| "docker.io".into());
    let Some(user) = a.username.clone() else {
        anyhow::bail!("berth login: give the user name with -u");
    };
    let password = match (&a.password, a.password_stdin) {
        (Some(p), false) => p.clone(),
        (None, true) => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
            s.trim_end_matches(['\n', '\r']).to_string()
        }
        _ => anyhow::bail!("berth login: give the password with --password or --password-stdin"),
    };
    let path = crate::image::registry::login(&server, &user, &password)?;
    println!("Login Succeeded (credentials in {})", path.display());
    Ok(0)
}

/// `berth logout`: forgets the credentials of a registry.
pub fn logout(server: Option<&str>) -> anyhow::Result<i32> {
    let server = server.unwrap_or("docker.io");
    if crate::image::registry::logout(server)? {
        println!("Removed login credentials for {server}");
    } else {
        println!("Not logged in to {server}");
    }
    Ok(0)
}

#[derive(Debug, clap::Args)]
pub struct LogoutArgs {
    /// The registry (default: Docker Hub)
    pub server: Option<String>,
}
