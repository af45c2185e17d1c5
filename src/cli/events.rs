//! `berth events`: the project's container events as they happen (create, start, kill, stop,
//! die, destroy, pause, health_status, exec_start ...), written by whichever berth process
//! acted (a verb, the supervisor) to one file per project, and followed here.

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use clap::Args;

use super::Global;
use super::ctx::state_root;
use super::project::name_only;
use crate::state::{EventRecord, events_path};

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// One JSON object per line
    #[arg(long)]
    pub json: bool,
    /// Also the events already recorded, before following
    #[arg(long)]
    pub past: bool,
    pub services: Vec<String>,
}

fn show(line: &str, a: &EventsArgs, out: &mut impl Write) {
    let Ok(e) = serde_json::from_str::<EventRecord>(line) else {
        return;
    };
    if !a.services.is_empty() && !a.services.contains(&e.service) {
        return;
    }
    if a.json {
        let _ = writeln!(out, "{line}");
        return;
    }
    let mut attrs = vec![format!("service={}", e.service)];
    attrs.extend(e.attributes.iter().map(|(k, v)| format!("{k}={v}")));
    let _ = writeln!(
        out,
        "{} {} {} {} ({})",
        e.time,
        e.kind,
        e.action,
        e.id,
        attrs.join(", ")
    );
}

pub fn run(g: &Global, a: &EventsArgs) -> anyhow::Result<i32> {
    let (name, _) = name_only(g)?;
    let path = events_path(&state_root(), &name);
    let mut offset = if a.past {
        0
    } else {
        std::fs::metadata(&path).map_or(0, |m| m.len())
    };
    let mut pending = String::new();
    loop {
        if let Ok(mut f) = std::fs::File::open(&path) {
            let len = f.metadata().map_or(0, |m| m.len());
            if len < offset {
                // The file started again (rotated): read the new one from its start.
                offset = 0;
            }
            if len > offset && f.seek(SeekFrom::Start(offset)).is_ok() {
                let mut buf = Vec::new();
                if f.read_to_end(&mut buf).is_ok() {
                    offset += buf.len() as u64;
                    pending.push_str(&String::from_utf8_lossy(&buf));
                    let mut out = std::io::stdout().lock();
                    while let Some(i) = pending.find('\n') {
                        let line: String = pending.drain(..=i).collect();
                        show(line.trim_end(), a, &mut out);
                    }
                    let _ = out.flush();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
