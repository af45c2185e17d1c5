//! `berth enable` / `berth disable` / `berth ls`: a daemonless tool loses its projects at a
//! reboot unless it tells the init system about them. `enable` writes a systemd unit that runs
//! `berth up -d` for the project at boot (and `berth stop` at shutdown), and links it into
//! `multi-user.target.wants` as `systemctl enable` would; `disable` removes both. `ls` lists
//! every project in the state root with its containers' states and whether it is enabled.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;

use super::Global;
use super::ctx::state_root;
use super::project::{load, runtime, tokio};
use crate::plan::State;
use crate::runtime::Runtime;
use crate::state::ProjectRecord;

#[derive(Debug, Args)]
pub struct EnableArgs {
    /// Also start the project now (`up -d`), as `systemctl enable --now`
    #[arg(long)]
    pub now: bool,
}

#[derive(Debug, Args)]
pub struct DisableArgs {
    /// The project (default: the one of the file here)
    pub project: Option<String>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Also projects with no running container
    #[arg(short, long)]
    pub all: bool,
    /// Only project names
    #[arg(short, long)]
    pub quiet: bool,
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
}

/// Where units go: `/etc/systemd/system`, or `BERTH_SYSTEMD_DIR` (tests, image builds).
fn unit_dir() -> PathBuf {
    std::env::var_os("BERTH_SYSTEMD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/systemd/system"))
}

fn unit_name(project: &str) -> String {
    format!("berth-{project}.service")
}

/// systemd's quoting for one word of an Exec line (C-style escapes inside double quotes;
/// `%` and `$` doubled so they are not specifiers or variables).
fn quote(word: &str) -> String {
    let mut s = String::from("\"");
    for c in word.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '%' => s.push_str("%%"),
            '$' => s.push_str("$$"),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// The unit's text: pure, so its shape is unit-tested.
pub fn unit_text(exe: &Path, root: &Path, r: &ProjectRecord) -> String {
    let mut global: Vec<String> = Vec::new();
    for f in &r.files {
        global.push("-f".into());
        global.push(f.to_string_lossy().into_owned());
    }
    global.push("-p".into());
    global.push(r.name.clone());
    global.push("--project-directory".into());
    global.push(r.working_dir.to_string_lossy().into_owned());
    for e in &r.env_files {
        global.push("--env-file".into());
        global.push(e.to_string_lossy().into_owned());
    }
    for p in &r.profiles {
        global.push("--profile".into());
        global.push(p.clone());
    }
    let cmd = |verb: &[&str]| {
        std::iter::once(exe.to_string_lossy().into_owned())
            .chain(global.iter().cloned())
            .chain(verb.iter().map(|s| s.to_string()))
            .map(|w| quote(&w))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "# Written by `berth enable`; `berth disable` removes it.
[Unit]
Description=berth project {name}
Wants=network-online.target
After=network-online.target local-fs.target

[Service]
Type=oneshot
RemainAfterExit=yes
Environment={env}
WorkingDirectory={dir}
ExecStart={start}
ExecStop={stop}
# The project's containers live in cgroups below this unit's.
Delegate=yes
KillMode=mixed
TimeoutStartSec=600

[Install]
WantedBy=multi-user.target
",
        name = r.name,
        env = quote(&format!("BERTH_ROOT={}", root.display())),
        // A path, not a command line: no quotes (systemd would take them literally).
        dir = r.working_dir.to_string_lossy().replace('%', "%%"),
        start = cmd(&["up", "-d", "--progress", "plain"]),
        stop = cmd(&["stop", "--progress", "plain"]),
    )
}

fn systemd_running() -> bool {
    Path::new("/run/systemd/system").is_dir() && std::env::var_os("BERTH_SYSTEMD_DIR").is_none()
}

fn daemon_reload() {
    if systemd_running() {
        let _ = std::process::Command::new("systemctl")
            .arg("daemon-reload")
            .status();
    }
}

pub fn enable(g: &Global, a: &EnableArgs) -> anyhow::Result<i32> {
    let l = load(g)?;
    let exe = std::env::current_exe().context("finding berth's own executable")?;
    let dir = unit_dir();
    let name = unit_name(&l.record.name);
    let wants = dir.join("multi-user.target.wants");
    std::fs::create_dir_all(&wants).with_context(|| format!("creating {}", wants.display()))?;
    let unit = dir.join(&name);
    let text = unit_text(&exe, &std::path::absolute(state_root())?, &l.record);
    crate::sys::atomic_write(&unit, text.as_bytes())
        .with_context(|| format!("writing {}", unit.display()))?;
    let link = wants.join(&name);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&unit, &link)
        .with_context(|| format!("linking {}", link.display()))?;
    daemon_reload();
    println!(
        "project {} starts at boot: {}",
        l.record.name,
        unit.display()
    );
    if a.now {
        return super::up::run(
            g,
            &super::up::UpArgs {
                detach: true,
                ..Default::default()
            },
        );
    }
    Ok(0)
}

pub fn disable(g: &Global, a: &DisableArgs) -> anyhow::Result<i32> {
    let project = match (&a.project, &g.project_name) {
        (Some(p), _) | (None, Some(p)) => p.clone(),
        (None, None) => super::project::name_only(g)?.0,
    };
    let dir = unit_dir();
    let name = unit_name(&project);
    let unit = dir.join(&name);
    if !unit.exists() {
        bail!("project {project} is not enabled (no {})", unit.display());
    }
    let _ = std::fs::remove_file(dir.join("multi-user.target.wants").join(&name));
    std::fs::remove_file(&unit).with_context(|| format!("removing {}", unit.display()))?;
    daemon_reload();
    println!("project {project} no longer starts at boot");
    Ok(0)
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Row {
    name: String,
    status: String,
    config_files: String,
    enabled: bool,
}

pub fn ls(a: &LsArgs) -> anyhow::Result<i32> {
    let root = state_root();
    let rt = runtime()?;
    let tk = tokio()?;
    let mut rows = Vec::new();
    for st in crate::state::projects(&root) {
        let observed = tk.block_on(rt.observe(&st.name))?;
        let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
        for c in &observed.containers {
            let word = match c.state {
                State::Running => "running",
                State::Paused => "paused",
                State::Created => "created",
                State::Exited(_) | State::OomKilled => "exited",
            };
            *counts.entry(word).or_default() += 1;
        }
        if !a.all && !counts.contains_key("running") {
            continue;
        }
        let status = counts
            .iter()
            .map(|(w, n)| format!("{w}({n})"))
            .collect::<Vec<_>>()
            .join(", ");
        let files = st
            .record()
            .map(|r| {
                r.files
                    .iter()
                    .map(|f| f.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        rows.push(Row {
            enabled: unit_dir().join(unit_name(&st.name)).exists(),
            name: st.name.clone(),
            status,
            config_files: files,
        });
    }
    if a.quiet {
        for r in &rows {
            println!("{}", r.name);
        }
    } else if a.format == "json" {
        println!("{}", serde_json::to_string(&rows)?);
    } else {
        println!(
            "{:<20} {:<24} {:<8} CONFIG FILES",
            "NAME", "STATUS", "ENABLED"
        );
        for r in &rows {
            let en = if r.enabled { "yes" } else { "no" };
            println!(
                "{:<20} {:<24} {:<8} {}",
                r.name, r.status, en, r.config_files
            );
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_runs_up_and_stop_with_the_files_it_was_enabled_with() {
        let r = ProjectRecord {
            name: "shop".into(),
            working_dir: "/srv/my shop".into(),
            files: vec!["/srv/my shop/compose.yaml".into()],
            env_files: vec![],
            profiles: vec!["debug".into()],
        };
        let t = unit_text(Path::new("/usr/bin/berth"), Path::new("/var/lib/berth"), &r);
        assert!(t.contains(
            "ExecStart=\"/usr/bin/berth\" \"-f\" \"/srv/my shop/compose.yaml\" \"-p\" \"shop\" \"--project-directory\" \"/srv/my shop\" \"--profile\" \"debug\" \"up\" \"-d\""
        ), "{t}");
        assert!(t.contains("ExecStop=\"/usr/bin/berth\""));
        assert!(t.contains("Environment=\"BERTH_ROOT=/var/lib/berth\""));
        assert!(t.contains("WantedBy=multi-user.target"));
        assert_eq!(quote("50%$x"), "\"50%%$$x\"");
    }
}
