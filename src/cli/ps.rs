//! `berth ps`: the project's containers, their state, health and restarts, as a table or as
//! JSON lines (the shape `docker compose ps --format json` prints).

use clap::Args;
use serde::Serialize;

use super::Global;
use super::project::{name_only, runtime, tokio};
use crate::plan::State;
use crate::runtime::Inspect;
use crate::runtime::Runtime;
use crate::state::ProjectState;

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show all containers, stopped ones too
    #[arg(short, long)]
    pub all: bool,
    /// Only container names
    #[arg(short, long)]
    pub quiet: bool,
    /// Only service names
    #[arg(long)]
    pub services: bool,
    /// Output format
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
    /// Only these services
    pub service: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Row {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    image: String,
    command: String,
    project: String,
    service: String,
    created_at: u64,
    state: String,
    status: String,
    health: String,
    exit_code: i32,
    restart_count: u32,
    #[serde(rename = "Pid")]
    pid: Option<i32>,
    ports: String,
    publishers: Vec<serde_json::Value>,
}

fn ago(secs: u64) -> String {
    match secs {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        2..=59 => format!("{secs} seconds"),
        60..=119 => "About a minute".into(),
        120..=3599 => format!("{} minutes", secs / 60),
        3600..=7199 => "About an hour".into(),
        7200..=172_799 => format!("{} hours", secs / 3600),
        _ => format!("{} days", secs / 86_400),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn run(g: &Global, a: &PsArgs) -> anyhow::Result<i32> {
    let (name, _) = name_only(g)?;
    let rt = runtime()?;
    let st = ProjectState::new(&super::ctx::state_root(), &name);
    let status = st.status();
    if let Some(msg) = &status.invalid
        && st.supervisor().is_some()
    {
        eprintln!(
            "berth: the project file was edited and does not load; the last good version is running:"
        );
        for l in msg.lines() {
            eprintln!("  {l}");
        }
    }
    let observed = tokio()?.block_on(rt.observe(&name))?;
    let published = crate::net::ports::recorded(st.dir());
    let t = now();
    let mut rows = Vec::new();
    for c in observed.containers {
        if !a.service.is_empty() && !a.service.contains(&c.service) {
            continue;
        }
        let Ok(info) = rt.info(&c.name) else { continue };
        let cs = status.containers.get(&c.name).cloned().unwrap_or_default();
        let restarting = cs.restarting && c.state != State::Running && st.supervisor().is_some();
        let health = match (c.state, cs.health) {
            (State::Running, Some(h)) => h.as_str().to_string(),
            _ => String::new(),
        };
        let (state, status_text, exit) = match c.state {
            State::Running => {
                let up = ago(t.saturating_sub(info.started_at.unwrap_or(t)));
                let h = match health.as_str() {
                    "" => String::new(),
                    "starting" => " (health: starting)".into(),
                    h => format!(" ({h})"),
                };
                ("running", format!("Up {up}{h}"), 0)
            }
            State::Created => ("created", "Created".to_string(), 0),
            State::Paused => ("paused", "Paused".to_string(), 0),
            State::Exited(_) | State::OomKilled if restarting => {
                let code = match c.state {
                    State::Exited(code) => code,
                    _ => 137,
                };
                (
                    "restarting",
                    format!("Restarting ({}), last exit {code}", cs.restarts + 1),
                    code,
                )
            }
            State::Exited(code) => {
                let when = info.finished_at.map_or(String::new(), |f| {
                    format!(" {} ago", ago(t.saturating_sub(f)))
                });
                ("exited", format!("Exited ({code}){when}"), code)
            }
            State::OomKilled => ("exited", "Exited (137) OOM-killed".to_string(), 137),
        };
        if !a.all && !matches!(state, "running" | "restarting") {
            continue;
        }
        rows.push(Row {
            id: info.name.clone(),
            name: info.name.clone(),
            image: info.image.clone(),
            command: info.command.join(" "),
            project: info.project.clone(),
            service: info.service.clone(),
            created_at: info.created_at,
            state: state.to_string(),
            status: status_text,
            health,
            exit_code: exit,
            restart_count: cs.restarts,
            pid: info.pid,
            ports: published
                .iter()
                .filter(|b| b.container == info.name && state == "running")
                .map(|b| b.shown())
                .collect::<Vec<_>>()
                .join(", "),
            publishers: published
                .iter()
                .filter(|b| b.container == info.name)
                .map(|b| {
                    serde_json::json!({
                        "URL": b.shown_ip(),
                        "TargetPort": b.target,
                        "PublishedPort": b.host_port,
                        "Protocol": b.proto.to_string(),
                    })
                })
                .collect(),
        });
    }
    if a.quiet {
        for r in &rows {
            println!("{}", r.name);
        }
        return Ok(0);
    }
    if a.services {
        let mut s: Vec<&str> = rows.iter().map(|r| r.service.as_str()).collect();
        s.dedup();
        for s in s {
            println!("{s}");
        }
        return Ok(0);
    }
    if a.format == "json" {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(0);
    }
    let cmd = |r: &Row| {
        let c: String = r.command.chars().take(22).collect();
        format!(
            "\"{c}{}\"",
            if r.command.chars().count() > 22 {
                "…"
            } else {
                ""
            }
        )
    };
    let w = |f: &dyn Fn(&Row) -> String, h: &str| {
        rows.iter()
            .map(|r| f(r).chars().count())
            .max()
            .unwrap_or(0)
            .max(h.len())
    };
    let wn = w(&|r| r.name.clone(), "NAME");
    let wi = w(&|r| r.image.clone(), "IMAGE");
    let wc = w(&cmd, "COMMAND");
    let ws = w(&|r| r.service.clone(), "SERVICE");
    let wcr = w(
        &|r| format!("{} ago", ago(t.saturating_sub(r.created_at))),
        "CREATED",
    );
    let wst = w(&|r| r.status.clone(), "STATUS");
    println!(
        "{:<wn$}   {:<wi$}   {:<wc$}   {:<ws$}   {:<wcr$}   {:<wst$}   PORTS",
        "NAME", "IMAGE", "COMMAND", "SERVICE", "CREATED", "STATUS"
    );
    for r in &rows {
        println!(
            "{:<wn$}   {:<wi$}   {:<wc$}   {:<ws$}   {:<wcr$}   {:<wst$}   {}",
            r.name,
            r.image,
            cmd(r),
            r.service,
            format!("{} ago", ago(t.saturating_sub(r.created_at))),
            r.status,
            r.ports
        );
    }
    Ok(0)
}

#[derive(Debug, Args)]
pub struct PortArgs {
    /// The service
    pub service: String,
    /// The container port
    pub private_port: u16,
    /// tcp or udp
    #[arg(long, default_value = "tcp", value_parser = ["tcp", "udp"])]
    pub protocol: String,
    /// Which replica, when the service has several
    #[arg(long, default_value_t = 1)]
    pub index: u32,
}

/// `berth port SERVICE PORT`: the host address a container port is published on.
pub fn port(g: &Global, a: &PortArgs) -> anyhow::Result<i32> {
    let (name, loaded) = name_only(g)?;
    let st = ProjectState::new(&super::ctx::state_root(), &name);
    let mut hits: Vec<crate::net::ports::Binding> = crate::net::ports::recorded(st.dir())
        .into_iter()
        .filter(|b| {
            b.service == a.service
                && b.target == a.private_port
                && b.proto.to_string() == a.protocol
        })
        .collect();
    hits.sort_by(|x, y| x.container.cmp(&y.container));
    // The replica by its container's name when the file is at hand, else by order.
    let want = loaded.as_ref().and_then(|l| {
        let svc = l.target.project.services.get(&a.service)?;
        Some(crate::plan::container_name(&name, &a.service, svc, a.index))
    });
    let hit = match want {
        Some(c) => hits.iter().find(|b| b.container == c),
        None => hits.get(a.index.saturating_sub(1) as usize),
    };
    match hit {
        Some(b) => {
            println!("{}:{}", b.shown_ip(), b.host_port);
            Ok(0)
        }
        None => anyhow::bail!(
            "no host port is published for {}/{} of service {} (replica {}) in project {name}",
            a.private_port,
            a.protocol,
            a.service,
            a.index
        ),
    }
}
