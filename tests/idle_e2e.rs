//! End to end: a supervisor that waits in berth-idle between bursts of work (root required).
//! Everything a supervisor does must go on across its idle spells: restarts by policy, health
//! checks, re-planning on an edit, serving published ports, stopping on `down`, and being
//! replaced after `kill -9`. The tests make it go idle after 300 ms without work
//! (`BERTH_IDLE_AFTER_MS`), so that every step below finds it idle or waking.

use std::path::Path;
use std::time::{Duration, Instant};

#[path = "support/env.rs"]
mod env;
use env::{Env, alive, eventually, pid, root};

/// `up -d` with a supervisor that goes idle after 300 ms without work.
fn up(env: &Env, p: &Path) {
    let o = env
        .command(p, &["up", "-d", "--progress", "quiet"])
        .env("BERTH_IDLE_AFTER_MS", "300")
        .output()
        .expect("run berth");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Whether the project's supervisor is `pid` and waits in berth-idle now.
fn idle(pid: i32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .is_ok_and(|e| e.to_string_lossy().contains("berth-idle"))
}

fn pss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(u64::MAX)
}

/// The first child of a container's init: its service.
fn service_of(init: i64) -> i32 {
    std::fs::read_to_string(format!("/proc/{init}/task/{init}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn http_get(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
    .ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    c.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_string())
}

/// How many `action` events of `container` the project's events file holds.
fn events(env: &Env, project: &str, action: &str, container: &str) -> usize {
    std::fs::read_to_string(env.state.join("events").join(format!("{project}.jsonl")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| {
            e["action"].as_str().is_some_and(|a| a.starts_with(action))
                && e["id"].as_str().is_some_and(|c| c.contains(container))
        })
        .count()
}

#[test]
fn an_idle_supervisor_keeps_the_project_converged() {
    if !root() {
        return;
    }
    let env = Env::new();
    let port = free_port();
    let p = env.project(
        "idle",
        &format!(
            "name: e2e-idle
services:
  keep:
    image: host
    command: [sleep, '1000']
    restart: always
  crash:
    image: host
    command: [sh, -c, 'sleep 0.3; exit 1']
    restart: on-failure:2
  web:
    image: host
    command: [sleep, '1000']
    environment:
      COLOR: blue
    healthcheck:
      test: [CMD-SHELL, 'echo probe >> /tmp/probes']
      interval: 2s
  site:
    image: host
    command: [sh, -c, 'mkdir -p /tmp/w && echo hello-idle > /tmp/w/index.html && cd /tmp/w && exec python3 -m http.server 80']
    ports: ['{port}:80']
"
        ),
    );
    let _d = env.down_on_drop(&p);
    up(&env, &p);
    let sup = env.supervisor_pid("e2e-idle").expect("supervisor");
    let c = |n: &str| env.container(&p, &format!("e2e-idle-{n}-1"));
    assert!(
        eventually(Duration::from_secs(20), || {
            c("crash")["RestartCount"] == 2
                && c("crash")["State"] == "exited"
                && c("web")["Health"] == "healthy"
        }),
        "{:?} {:?}\n{}",
        c("crash"),
        c("web"),
        env.supervisor_log("e2e-idle")
    );

    // It goes idle, in the same process, at a few pages' cost.
    assert!(
        eventually(Duration::from_secs(10), || idle(sup)),
        "{}",
        env.supervisor_log("e2e-idle")
    );
    let pss = pss_kib(sup);
    assert!(pss < 128, "an idle supervisor takes {pss} KiB");

    // A published port answers while it is idle (the connection wakes it), and it goes idle
    // again afterwards.
    let mut page = None;
    eventually(Duration::from_secs(10), || {
        page = http_get(port);
        page.is_some()
    });
    assert_eq!(page.as_deref(), Some("hello-idle"));
    assert!(
        eventually(Duration::from_secs(10), || idle(sup)),
        "{}",
        env.supervisor_log("e2e-idle")
    );

    // restart: always, for a service killed while the supervisor is idle.
    let keep = pid(&c("keep"));
    let service = service_of(keep);
    assert!(service > 0);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(service),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    assert!(
        eventually(Duration::from_secs(10), || {
            let k = c("keep");
            k["State"] == "running" && pid(&k) != keep && k["RestartCount"] == 1
        }),
        "{:?}\n{}",
        c("keep"),
        env.supervisor_log("e2e-idle")
    );
    // The service the supervisor started again has no signal blocked (the supervisor keeps
    // its stop signals blocked, and a child would inherit that).
    let restarted = service_of(pid(&c("keep")));
    let status = std::fs::read_to_string(format!("/proc/{restarted}/status")).unwrap_or_default();
    assert!(
        status.contains("SigBlk:\t0000000000000000"),
        "{restarted}: {status}"
    );
    assert!(eventually(Duration::from_secs(10), || idle(sup)));

    // Health checks go on across idle spells, and a status said once is not said again.
    let probes = |env: &Env| {
        env.berth(&p, &["exec", "-T", "web", "cat", "/tmp/probes"])
            .stdout
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count()
    };
    let before = probes(&env);
    std::thread::sleep(env::scaled(Duration::from_secs(5)));
    let after = probes(&env);
    assert!(
        after >= before + 2,
        "probes {before} -> {after}\n{}",
        env.supervisor_log("e2e-idle")
    );
    assert_eq!(c("web")["Health"], "healthy");
    assert_eq!(
        events(&env, "e2e-idle", "health_status", "e2e-idle-web-1"),
        1
    );
    // The crash loop that gave up stays down, its end said once per run.
    assert_eq!(c("crash")["RestartCount"], 2);
    assert_eq!(c("crash")["State"], "exited");
    assert_eq!(events(&env, "e2e-idle", "die", "e2e-idle-crash-1"), 3);

    // An edit saved while it is idle: that service alone is recreated, within 2 s.
    assert!(eventually(Duration::from_secs(10), || idle(sup)));
    let (web, site) = (pid(&c("web")), pid(&c("site")));
    let keep = pid(&c("keep"));
    let file = p.join("berth.yaml");
    let text = std::fs::read_to_string(&file).expect("read");
    std::fs::write(&file, text.replace("COLOR: blue", "COLOR: green")).expect("write");
    let t = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || {
            let w = c("web");
            w["State"] == "running" && pid(&w) != web
        }),
        "{}",
        env.supervisor_log("e2e-idle")
    );
    assert!(
        t.elapsed() < env::scaled(Duration::from_secs(2)),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!((pid(&c("site")), pid(&c("keep"))), (site, keep));
    assert_eq!(c("crash")["RestartCount"], 2);
    assert_eq!(env.supervisor_pid("e2e-idle"), Some(sup));

    // `down` while it is idle: the supervisor stops, and nothing of the project is left.
    assert!(eventually(Duration::from_secs(10), || idle(sup)));
    let pids: Vec<i64> = env.ps(&p).iter().map(pid).filter(|&p| p > 0).collect();
    env.ok(&p, &["down", "-t", "1"]);
    assert!(eventually(Duration::from_secs(2), || !alive(sup as i64)));
    for p in pids {
        assert!(eventually(Duration::from_secs(2), || !alive(p)));
    }
    assert!(!env.state.join("projects").join("e2e-idle").exists());
    assert!(http_get(port).is_none(), "the port is still served");
}

#[test]
fn a_killed_idle_supervisor_is_replaced_without_duplicates() {
    if !root() {
        return;
    }
    let env = Env::new();
    let p = env.project(
        "k",
        "name: e2e-idlekill
services:
  a:
    image: host
    command: [sleep, '1000']
  b:
    image: host
    command: [sleep, '1000']
    restart: always
",
    );
    let _d = env.down_on_drop(&p);
    up(&env, &p);
    let sup = env.supervisor_pid("e2e-idlekill").expect("supervisor");
    assert!(eventually(Duration::from_secs(10), || idle(sup)));
    let before: Vec<i64> = env.ps(&p).iter().map(pid).collect();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sup),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    assert!(eventually(Duration::from_secs(2), || !alive(sup as i64)));
    up(&env, &p);
    let after: Vec<i64> = env.ps(&p).iter().map(pid).collect();
    assert_eq!(before, after, "same containers, same processes");
    let new = env
        .supervisor_pid("e2e-idlekill")
        .expect("a new supervisor");
    assert!(new != sup);
    assert!(eventually(Duration::from_secs(10), || idle(new)));
    env.ok(&p, &["down", "-t", "0"]);
    assert!(eventually(Duration::from_secs(2), || !alive(new as i64)));
    for p in after {
        assert!(eventually(Duration::from_secs(2), || !alive(p)));
    }
}
