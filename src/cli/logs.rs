//! `berth logs`, and the log streaming of a foreground `berth up`: the json-file records each
//! container's init writes, with a coloured `name |` prefix like `docker compose logs`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{IsTerminal, Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use super::Global;
use super::ctx::Engine as LinuxRuntime;
use super::project::{name_only, runtime, tokio};
use crate::runtime::Inspect;
use crate::runtime::LOG_FILE;
use crate::runtime::Runtime;

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Follow the output
    #[arg(short, long)]
    pub follow: bool,
    /// Lines from the end of each container's log ("all" for every line)
    #[arg(short = 'n', long, default_value = "all")]
    pub tail: String,
    /// Show timestamps
    #[arg(short, long)]
    pub timestamps: bool,
    /// Only lines since this time (RFC 3339, or a duration like 10m)
    #[arg(long)]
    pub since: Option<String>,
    /// No colours
    #[arg(long)]
    pub no_color: bool,
    /// No `name |` prefix
    #[arg(long)]
    pub no_log_prefix: bool,
    /// Replica of the service (with one SERVICE)
    #[arg(long)]
    pub index: Option<u32>,
    pub services: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Record {
    log: String,
    #[serde(default)]
    time: String,
}

const COLORS: [&str; 10] = ["36", "33", "32", "35", "34", "96", "93", "92", "95", "94"];

/// How lines are printed.
#[derive(Debug, Clone)]
pub struct Style {
    pub color: bool,
    pub prefix: bool,
    pub timestamps: bool,
    pub width: usize,
}

impl Style {
    fn line(&self, name: &str, color: &str, r: &Record) -> String {
        let text = r.log.strip_suffix('\n').unwrap_or(&r.log);
        let mut out = String::new();
        if self.prefix {
            if self.color {
                out.push_str(&format!(
                    "\x1b[{color}m{name:<w$} |\x1b[0m ",
                    w = self.width
                ));
            } else {
                out.push_str(&format!("{name:<w$} | ", w = self.width));
            }
        }
        if self.timestamps {
            out.push_str(&r.time);
            out.push(' ');
        }
        out.push_str(text);
        out
    }
}

/// `--since`: an RFC 3339 time, or a duration before now (`10m`, `1h30m`).
fn since_cutoff(s: &str) -> anyhow::Result<String> {
    if s.contains('T') || s.contains('-') {
        return Ok(s.to_string());
    }
    let d = crate::spec::units::parse_duration(s)
        .map_err(|e| anyhow::anyhow!("--since {s}: {e}"))?
        .as_std();
    let t = std::time::SystemTime::now()
        .checked_sub(d)
        .unwrap_or(std::time::UNIX_EPOCH);
    Ok(crate::sys::timestamp(t))
}

/// A container's log files, oldest first (rotated files carry a number, higher is older).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            if n == LOG_FILE {
                Some((0, e.path()))
            } else {
                n.strip_prefix(&format!("{LOG_FILE}."))
                    .and_then(|i| i.parse().ok())
                    .map(|i| (i, e.path()))
            }
        })
        .collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.0));
    v.into_iter().map(|(_, p)| p).collect()
}

fn records(text: &str) -> impl Iterator<Item = Record> + '_ {
    text.lines().filter_map(|l| serde_json::from_str(l).ok())
}

/// Follows the current log file of one container across rotations.
struct Tail {
    path: PathBuf,
    file: Option<File>,
    ino: u64,
    pending: String,
}

impl Tail {
    fn at_end(path: PathBuf) -> Tail {
        let mut t = Tail {
            path,
            file: None,
            ino: 0,
            pending: String::new(),
        };
        if let Ok(mut f) = File::open(&t.path) {
            let _ = f.seek(SeekFrom::End(0));
            t.ino = f.metadata().map(|m| m.ino()).unwrap_or(0);
            t.file = Some(f);
        }
        t
    }

    fn read_new(&mut self) -> Vec<Record> {
        let mut buf = String::new();
        if let Some(f) = &mut self.file {
            let _ = f.read_to_string(&mut buf);
        }
        // Rotated: finish the old file (read above), then start the new one from its start.
        let now = std::fs::metadata(&self.path).map(|m| m.ino()).unwrap_or(0);
        if now != 0
            && now != self.ino
            && let Ok(mut f) = File::open(&self.path)
        {
            let _ = f.read_to_string(&mut buf);
            self.file = Some(f);
            self.ino = now;
        }
        self.pending.push_str(&buf);
        let Some(end) = self.pending.rfind('\n') else {
            return Vec::new();
        };
        let done: String = self.pending.drain(..=end).collect();
        records(&done).collect()
    }
}

/// Streams the project's logs from now on, until `stop` resolves. Containers that appear
/// later (recreated, scaled) are picked up.
pub async fn follow(
    rt: Arc<LinuxRuntime>,
    project: String,
    services: Vec<String>,
    style: Style,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut tails: BTreeMap<String, (Tail, String)> = BTreeMap::new();
    let mut colors: BTreeMap<String, &str> = BTreeMap::new();
    let mut tick = 0u32;
    loop {
        if tick.is_multiple_of(10)
            && let Ok(o) = rt.observe(&project).await
        {
            for c in o.containers {
                if !services.is_empty() && !services.contains(&c.service) {
                    continue;
                }
                let n = colors.len();
                let color = *colors
                    .entry(c.service.clone())
                    .or_insert(COLORS[n % COLORS.len()]);
                if let Ok(info) = rt.info(&c.name) {
                    let path = info.dir.join(LOG_FILE);
                    let fresh = tails.get(&c.name).is_none_or(|(t, _)| t.file.is_none());
                    if fresh {
                        // A container seen for the first time after the start shows all of
                        // its output; those present at the start, only what comes next.
                        let t = if tick == 0 {
                            Tail::at_end(path)
                        } else {
                            Tail {
                                path,
                                file: None,
                                ino: 0,
                                pending: String::new(),
                            }
                        };
                        tails.insert(c.name.clone(), (t, color.to_string()));
                    }
                }
            }
        }
        for (name, (t, color)) in tails.iter_mut() {
            if t.file.is_none()
                && let Ok(f) = File::open(&t.path)
            {
                t.ino = f.metadata().map(|m| m.ino()).unwrap_or(0);
                t.file = Some(f);
            }
            for r in t.read_new() {
                println!("{}", style.line(name, color, &r));
            }
        }
        tick += 1;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = &mut stop => return,
        }
    }
}

pub fn run(g: &Global, a: &LogsArgs) -> anyhow::Result<i32> {
    let (project, _) = name_only(g)?;
    let rt = runtime()?;
    let tk = tokio()?;
    let observed = tk.block_on(rt.observe(&project))?;
    let mut containers: Vec<_> = observed
        .containers
        .into_iter()
        .filter(|c| a.services.is_empty() || a.services.contains(&c.service))
        .filter(|c| a.index.is_none_or(|i| c.index == i))
        .collect();
    for s in &a.services {
        if !containers.iter().any(|c| &c.service == s) {
            eprintln!("berth logs: no container of service {s:?} in project {project}");
        }
    }
    containers.sort_by(|x, y| x.name.cmp(&y.name));
    let width = containers.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let style = Style {
        color: !a.no_color
            && std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none(),
        prefix: !a.no_log_prefix,
        timestamps: a.timestamps,
        width,
    };
    let since = a.since.as_deref().map(since_cutoff).transpose()?;
    let tail: Option<usize> = match a.tail.as_str() {
        "all" | "-1" => None,
        n => Some(
            n.parse()
                .map_err(|_| anyhow::anyhow!("--tail {n}: expected a number or \"all\""))?,
        ),
    };
    // Everything so far, merged across containers by time.
    let mut all: Vec<(String, String, String, Record)> = Vec::new();
    let mut services: Vec<String> = Vec::new();
    for c in &containers {
        if !services.contains(&c.service) {
            services.push(c.service.clone());
        }
        let color =
            COLORS[services.iter().position(|s| s == &c.service).unwrap_or(0) % COLORS.len()];
        let Ok(info) = rt.info(&c.name) else { continue };
        let mut mine: Vec<Record> = Vec::new();
        for f in files(&info.dir) {
            if let Ok(text) = std::fs::read_to_string(&f) {
                mine.extend(records(&text));
            }
        }
        if let Some(cut) = &since {
            mine.retain(|r| r.time.as_str() >= cut.as_str());
        }
        if let Some(n) = tail {
            let skip = mine.len().saturating_sub(n);
            mine.drain(..skip);
        }
        for r in mine {
            all.push((r.time.clone(), c.name.clone(), color.to_string(), r));
        }
    }
    all.sort_by(|x, y| x.0.cmp(&y.0));
    for (_, name, color, r) in &all {
        println!("{}", style.line(name, color, r));
    }
    if a.follow {
        let services = a.services.clone();
        tk.block_on(follow(rt.clone(), project, services, style, async {
            let _ = tokio::signal::ctrl_c().await;
        }));
    }
    Ok(0)
}
