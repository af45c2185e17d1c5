//! `berth stats`: CPU, memory, processes, network and disk of the project's running
//! containers, from their cgroups, their network namespaces and their writable layers. Live
//! (redrawn every second) on a terminal, or one sample with `--no-stream`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use super::Global;
use super::lifecycle::select;
use crate::plan::State;
use crate::runtime::{Inspect, Stats};

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// One sample, then exit
    #[arg(long)]
    pub no_stream: bool,
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
    /// Don't shorten names
    #[arg(long)]
    pub no_trunc: bool,
    pub services: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Row {
    name: String,
    service: String,
    #[serde(rename = "CPUPerc")]
    cpu_perc: f64,
    mem_usage: u64,
    mem_limit: Option<u64>,
    mem_perc: Option<f64>,
    net_rx: u64,
    net_tx: u64,
    /// Bytes per second over the sample, and the limits (`bandwidth:`), in bytes per second.
    net_rx_rate: u64,
    net_tx_rate: u64,
    net_rx_limit: Option<u64>,
    net_tx_limit: Option<u64>,
    disk: u64,
    pids: u64,
}

pub use crate::support::human_size as human;

/// A rate in bits per second as the file's `bandwidth:` keys write it (`8mbit`).
pub fn bits(bytes_per_sec: u64) -> String {
    let b = bytes_per_sec * 8;
    for (unit, n) in [
        ("gbit", 1_000_000_000),
        ("mbit", 1_000_000),
        ("kbit", 1_000),
    ] {
        if b >= n {
            let v = b as f64 / n as f64;
            return if v.fract() == 0.0 {
                format!("{v}{unit}")
            } else {
                format!("{v:.1}{unit}")
            };
        }
    }
    format!("{b}bit")
}

/// The host's memory, the limit Docker shows for a container without one.
fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = text
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

pub fn run(g: &Global, a: &StatsArgs) -> anyhow::Result<i32> {
    let s = select(g, &a.services)?;
    let names: Vec<(String, String)> = s
        .containers
        .iter()
        .filter(|c| c.state == State::Running)
        .map(|c| (c.name.clone(), c.service.clone()))
        .collect();
    let sample =
        || -> Vec<Option<Stats>> { names.iter().map(|(n, _)| s.rt.stats(n).ok()).collect() };
    let mut before = sample();
    let mut t0 = Instant::now();
    let live = !a.no_stream && a.format == "table" && std::io::stdout().is_terminal();
    let host = host_memory();
    loop {
        // CPU % is the CPU time used over a wall-clock interval, as `docker stats` shows it
        // (100 % is one core).
        std::thread::sleep(Duration::from_millis(if a.no_stream { 500 } else { 1000 }));
        let after = sample();
        let secs = t0.elapsed().as_secs_f64();
        t0 = Instant::now();
        let rows: Vec<Row> = names
            .iter()
            .zip(before.iter().zip(after.iter()))
            .filter_map(|((name, service), (b, a))| {
                let a = (*a)?;
                let cpu = b.map_or(0.0, |b| {
                    a.usage.cpu_ns.saturating_sub(b.usage.cpu_ns) as f64 / (secs * 1e9) * 100.0
                });
                let limit = a.usage.memory_limit.or(host);
                let rate = |now: u64, then: Option<u64>| {
                    then.map_or(0, |t| (now.saturating_sub(t) as f64 / secs) as u64)
                };
                Some(Row {
                    name: name.clone(),
                    service: service.clone(),
                    cpu_perc: (cpu * 100.0).round() / 100.0,
                    mem_usage: a.usage.memory,
                    mem_limit: limit,
                    mem_perc: limit
                        .filter(|l| *l > 0)
                        .map(|l| (a.usage.memory as f64 / l as f64 * 10000.0).round() / 100.0),
                    net_rx: a.net_rx,
                    net_tx: a.net_tx,
                    net_rx_rate: rate(a.net_rx, b.map(|b| b.net_rx)),
                    net_tx_rate: rate(a.net_tx, b.map(|b| b.net_tx)),
                    net_rx_limit: a.net_rx_limit,
                    net_tx_limit: a.net_tx_limit,
                    disk: a.disk,
                    pids: a.usage.pids,
                })
            })
            .collect();
        if a.format == "json" {
            for r in &rows {
                println!("{}", serde_json::to_string(r)?);
            }
        } else {
            if live {
                // Clear the screen and go home, as `docker stats` redraws.
                print!("\x1b[2J\x1b[H");
            }
            println!(
                "{:<28} {:>8} {:>22} {:>7} {:>20} {:>34} {:>10} {:>5}",
                "NAME",
                "CPU %",
                "MEM USAGE / LIMIT",
                "MEM %",
                "NET I/O",
                "NET RATE IN / OUT (LIMIT)",
                "DISK",
                "PIDS"
            );
            for r in &rows {
                let mut name = r.name.clone();
                if !a.no_trunc && name.len() > 28 {
                    name.truncate(27);
                    name.push('…');
                }
                let rate = |r: u64, l: Option<u64>| match l {
                    Some(l) => format!("{}/s ({})", human(r), bits(l)),
                    None => format!("{}/s", human(r)),
                };
                println!(
                    "{:<28} {:>7.2}% {:>22} {:>7} {:>20} {:>34} {:>10} {:>5}",
                    name,
                    r.cpu_perc,
                    format!(
                        "{} / {}",
                        human(r.mem_usage),
                        r.mem_limit.map_or("-".into(), human)
                    ),
                    r.mem_perc.map_or("-".into(), |p| format!("{p:.2}%")),
                    format!("{} / {}", human(r.net_rx), human(r.net_tx)),
                    format!(
                        "{} / {}",
                        rate(r.net_rx_rate, r.net_rx_limit),
                        rate(r.net_tx_rate, r.net_tx_limit)
                    ),
                    human(r.disk),
                    r.pids
                );
            }
        }
        if a.no_stream {
            return Ok(0);
        }
        before = after;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_print_like_docker() {
        assert_eq!(super::human(512), "512B");
        assert_eq!(super::human(64 * 1024 * 1024), "64.00MiB");
        assert_eq!(super::human(1536), "1.50KiB");
        assert_eq!(super::bits(1_000_000), "8mbit");
        assert_eq!(super::bits(1_250), "10kbit");
        assert_eq!(super::bits(187_500), "1.5mbit");
    }
}
