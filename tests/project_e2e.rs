//! End to end: the berth binary on real projects (`image: host`), as a user runs it. Root
//! required (CI runs as root). Each test has its own state root, project directory and project
//! names, and checks that `down` leaves nothing of its project behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use berth::runtime::linux::cgroup::Cgroup;

fn root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

struct Env {
    dir: tempfile::TempDir,
    state: PathBuf,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        Env { dir, state }
    }

    /// A project directory with this berth.yaml.
    fn project(&self, name: &str, yaml: &str) -> PathBuf {
        let d = self.dir.path().join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join("berth.yaml"), yaml).expect("write");
        d
    }

    fn berth(&self, project: &Path, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(args)
            .current_dir(project)
            .env("BERTH_ROOT", &self.state)
            .env_remove("COMPOSE_FILE")
            .env_remove("COMPOSE_PROJECT_NAME")
            .output()
            .expect("run berth")
    }

    fn ok(&self, project: &Path, args: &[&str]) -> String {
        let o = self.berth(project, args);
        assert!(
            o.status.success(),
            "berth {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `ps -a --format json`, as (name -> (state, pid, restarts, exit code, health)).
    fn ps(&self, project: &Path) -> Vec<serde_json::Value> {
        self.ok(project, &["ps", "-a", "--format", "json"])
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn container(&self, project: &Path, name: &str) -> serde_json::Value {
        self.ps(project)
            .into_iter()
            .find(|c| c["Name"] == name)
            .unwrap_or(serde_json::Value::Null)
    }

    fn supervisor_pid(&self, project: &str) -> Option<i32> {
        std::fs::read_to_string(
            self.state
                .join("projects")
                .join(project)
                .join("supervisor.pid"),
        )
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
    }

    fn supervisor_log(&self, project: &str) -> String {
        std::fs::read_to_string(
            self.state
                .join("projects")
                .join(project)
                .join("supervisor.log"),
        )
        .unwrap_or_default()
    }
}

/// Polls `f` until it holds or `limit` passes.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

fn alive(pid: i64) -> bool {
    berth::runtime::linux::process_starttime(pid as i32).is_some()
}

fn pid(c: &serde_json::Value) -> i64 {
    c["Pid"].as_i64().unwrap_or(0)
}

/// After `down`: no container, cgroup, init process, mount or state of the project remains.
fn assert_gone(env: &Env, project: &str, names: &[&str], pids: &[i64]) {
    for n in names {
        assert!(
            Cgroup::open(&format!("{project}/{n}"))
                .ok()
                .flatten()
                .is_none(),
            "cgroup of {n} left behind"
        );
        assert!(
            !env.state.join("containers").join(n).exists(),
            "{n} left behind"
        );
    }
    for p in pids {
        assert!(
            eventually(Duration::from_secs(2), || !alive(*p)),
            "process {p} left behind"
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    assert!(
        !mounts.contains(env.state.to_string_lossy().as_ref()),
        "a mount under the state root is left"
    );
    assert!(!env.state.join("projects").join(project).exists());
    if let Some(s) = env.supervisor_pid(project) {
        assert!(!alive(s as i64), "supervisor left running");
    }
}

/// Brings a project down when a test fails halfway, so nothing is left on the host.
struct Down<'a>(&'a Env, PathBuf);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = self.0.berth(&self.1, &["down", "-t", "0"]);
    }
}

fn two_services(project: &str) -> String {
    format!(
        "name: {project}
services:
  web:
    image: host
    command: [sleep, '1000']
    environment:
      COLOR: blue
  worker:
    image: host
    command: [sh, -c, 'echo working; exec sleep 1000']
"
    )
}

#[test]
fn up_is_idempotent_and_down_removes_only_its_project() {
    if !root() {
        return;
    }
    let env = Env::new();
    let a = env.project("a", &two_services("e2e-a"));
    let b = env.project("b", &two_services("e2e-b"));
    let _da = Down(&env, a.clone());
    let _db = Down(&env, b.clone());
    env.ok(&a, &["up", "-d", "--progress", "plain"]);
    env.ok(&b, &["up", "-d", "--progress", "plain"]);
    let before = env.ps(&a);
    assert_eq!(before.len(), 2);
    assert!(before.iter().all(|c| c["State"] == "running"), "{before:?}");

    // A second `up` on the unchanged file touches nothing.
    let out = env.berth(&a, &["up", "-d", "--progress", "plain"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("Creating") && !err.contains("Starting"),
        "{err}"
    );
    let after = env.ps(&a);
    for c in &before {
        let same = after.iter().find(|x| x["Name"] == c["Name"]).map(pid);
        assert_eq!(same, Some(pid(c)), "{} was restarted", c["Name"]);
    }
    assert!(env.ok(&a, &["logs", "worker"]).contains("working"));

    // down removes a's containers, cgroups, processes and state; b's survive.
    let pids: Vec<i64> = after.iter().map(pid).collect();
    env.ok(&a, &["down"]);
    assert_gone(&env, "e2e-a", &["e2e-a-web-1", "e2e-a-worker-1"], &pids);
    let bs = env.ps(&b);
    assert_eq!(bs.len(), 2);
    assert!(bs.iter().all(|c| c["State"] == "running" && alive(pid(c))));
    let bpids: Vec<i64> = bs.iter().map(pid).collect();
    env.ok(&b, &["down", "-t", "1"]);
    assert_gone(&env, "e2e-b", &["e2e-b-web-1", "e2e-b-worker-1"], &bpids);
}

#[test]
fn restart_policies() {
    if !root() {
        return;
    }
    let env = Env::new();
    let p = env.project(
        "r",
        "name: e2e-restart
services:
  crash:
    image: host
    command: [sh, -c, 'echo crashing; exit 1']
    restart: on-failure:3
  keep:
    image: host
    command: [sleep, '1000']
    restart: always
",
    );
    let _d = Down(&env, p.clone());
    env.ok(&p, &["up", "-d", "--progress", "quiet"]);
    // Three restarts, then it stays down with its exit code.
    assert!(
        eventually(Duration::from_secs(20), || {
            let c = env.container(&p, "e2e-restart-crash-1");
            c["RestartCount"] == 3 && c["State"] == "exited"
        }),
        "{:?}\n{}",
        env.container(&p, "e2e-restart-crash-1"),
        env.supervisor_log("e2e-restart")
    );
    std::thread::sleep(Duration::from_millis(1500));
    let c = env.container(&p, "e2e-restart-crash-1");
    assert_eq!(
        (c["RestartCount"].as_i64(), c["ExitCode"].as_i64()),
        (Some(3), Some(1))
    );
    // The delays grew: 100 ms, 200 ms, 400 ms.
    let log = env.supervisor_log("e2e-restart");
    for d in [
        "restart 1 in 100ms",
        "restart 2 in 200ms",
        "restart 3 in 400ms",
    ] {
        assert!(log.contains(d), "{log}");
    }
    assert_eq!(
        env.ok(&p, &["logs", "crash"]).matches("crashing").count(),
        4
    );

    // restart: always survives kill -9 of its process.
    let keep = env.container(&p, "e2e-restart-keep-1");
    let init = pid(&keep);
    let children =
        std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap_or_default();
    let service: i32 = children
        .split_whitespace()
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    assert!(service > 0);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(service),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || {
            let c = env.container(&p, "e2e-restart-keep-1");
            c["State"] == "running" && pid(&c) != init && c["RestartCount"] == 1
        }),
        "{:?}",
        env.container(&p, "e2e-restart-keep-1")
    );
    let pids = vec![pid(&env.container(&p, "e2e-restart-keep-1"))];
    env.ok(&p, &["down", "-t", "1"]);
    assert_gone(
        &env,
        "e2e-restart",
        &["e2e-restart-crash-1", "e2e-restart-keep-1"],
        &pids,
    );
}

#[test]
fn an_edit_recreates_only_what_changed_and_a_bad_edit_changes_nothing() {
    if !root() {
        return;
    }
    let env = Env::new();
    let p = env.project("w", &two_services("e2e-watch"));
    let _d = Down(&env, p.clone());
    env.ok(&p, &["up", "-d", "--progress", "quiet"]);
    let web = pid(&env.container(&p, "e2e-watch-web-1"));
    let worker = pid(&env.container(&p, "e2e-watch-worker-1"));
    let file = p.join("berth.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("COLOR: blue", "COLOR: green")).unwrap();
    let t = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || {
            let c = env.container(&p, "e2e-watch-web-1");
            c["State"] == "running" && pid(&c) != web
        }),
        "{}",
        env.supervisor_log("e2e-watch")
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(pid(&env.container(&p, "e2e-watch-worker-1")), worker);
    let web2 = pid(&env.container(&p, "e2e-watch-web-1"));
    let env_of = std::fs::read(format!("/proc/{web2}/task/{web2}/children")).unwrap_or_default();
    let child: i32 = String::from_utf8_lossy(&env_of)
        .split_whitespace()
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let environ = std::fs::read(format!("/proc/{child}/environ")).unwrap_or_default();
    assert!(String::from_utf8_lossy(&environ).contains("COLOR=green"));

    // An edit that does not validate: nothing changes, and ps says so.
    std::fs::write(&file, text.replace("command: [sleep", "comand: [sleep")).unwrap();
    assert!(
        eventually(Duration::from_secs(5), || {
            let o = env.berth(&p, &["-p", "e2e-watch", "ps"]);
            String::from_utf8_lossy(&o.stderr).contains("last good version is running")
        }),
        "{}",
        env.supervisor_log("e2e-watch")
    );
    let o = env.berth(&p, &["-p", "e2e-watch", "ps"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("berth.yaml:"));
    assert_eq!(pid(&env.container(&p, "e2e-watch-worker-1")), worker);
    // (ps loads the file to find the project; with a broken file, -p names it.)
    let o = env.berth(&p, &["-p", "e2e-watch", "ps", "--format", "json"]);
    let n = String::from_utf8_lossy(&o.stdout).lines().count();
    assert_eq!(n, 2);
    std::fs::write(&file, &text).unwrap();
    let pids = vec![worker];
    env.ok(&p, &["down", "-t", "1"]);
    assert_gone(
        &env,
        "e2e-watch",
        &["e2e-watch-web-1", "e2e-watch-worker-1"],
        &pids,
    );
}

#[test]
fn a_killed_supervisor_is_replaced_without_duplicates() {
    if !root() {
        return;
    }
    let env = Env::new();
    let p = env.project("k", &two_services("e2e-kill"));
    let _d = Down(&env, p.clone());
    env.ok(&p, &["up", "-d", "--progress", "quiet"]);
    let before: Vec<(String, i64)> = env
        .ps(&p)
        .iter()
        .map(|c| (c["Name"].as_str().unwrap_or("").to_string(), pid(c)))
        .collect();
    let sup = env.supervisor_pid("e2e-kill").expect("supervisor pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sup),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(eventually(Duration::from_secs(2), || !alive(sup as i64)));
    env.ok(&p, &["up", "-d", "--progress", "quiet"]);
    let after: Vec<(String, i64)> = env
        .ps(&p)
        .iter()
        .map(|c| (c["Name"].as_str().unwrap_or("").to_string(), pid(c)))
        .collect();
    assert_eq!(before, after, "same containers, same processes");
    let new = env.supervisor_pid("e2e-kill").expect("a new supervisor");
    assert!(new != sup && alive(new as i64));
    let pids: Vec<i64> = after.iter().map(|(_, p)| *p).collect();
    env.ok(&p, &["down", "-t", "1"]);
    assert_gone(
        &env,
        "e2e-kill",
        &["e2e-kill-web-1", "e2e-kill-worker-1"],
        &pids,
    );
}

#[test]
fn scale_run_and_logs_follow() {
    if !root() {
        return;
    }
    let env = Env::new();
    let p = env.project(
        "s",
        "name: e2e-scale
services:
  web:
    image: host
    command: [sh, -c, 'echo started; i=0; while true; do i=$$((i+1)); echo tick $$i; sleep 0.2; done']
",
    );
    let _d = Down(&env, p.clone());
    env.ok(&p, &["up", "-d", "--progress", "quiet"]);
    let first = pid(&env.container(&p, "e2e-scale-web-1"));

    // scale web=3 and back to one; the first replica is never touched.
    env.ok(&p, &["scale", "web=3"]);
    let ps = env.ps(&p);
    assert_eq!(ps.len(), 3, "{ps:?}");
    assert!(ps.iter().all(|c| c["State"] == "running"));
    let third = pid(&env.container(&p, "e2e-scale-web-3"));
    env.ok(&p, &["scale", "web=1"]);
    let ps = env.ps(&p);
    assert_eq!(ps.len(), 1, "{ps:?}");
    assert_eq!(pid(&ps[0]), first);
    assert!(eventually(Duration::from_secs(2), || !alive(third)));
    assert!(!env.state.join("containers/e2e-scale-web-3").exists());

    // run --rm: its output and exit status, then nothing left of it.
    let o = env.berth(
        &p,
        &[
            "run",
            "--rm",
            "web",
            "sh",
            "-c",
            "echo one-off $(hostname); exit 3",
        ],
    );
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stdout).contains("one-off e2e-scale-web-run-"));
    let dirs: Vec<String> = std::fs::read_dir(env.state.join("containers"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dirs, ["e2e-scale-web-1"]);

    // logs -f follows: lines written after it started arrive while it runs.
    let max_tick = |text: &str| {
        text.lines()
            .filter_map(|l| l.rsplit("tick ").next()?.trim().parse::<u64>().ok())
            .max()
            .unwrap_or(0)
    };
    let before = max_tick(&env.ok(&p, &["logs", "--no-color"]));
    let child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["logs", "-f", "--no-color"])
        .current_dir(&p)
        .env("BERTH_ROOT", &env.state)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("e2e-scale-web-1 | started"), "{text}");
    // A tick every 200 ms: following for 1.5 s shows several that came after `before`.
    assert!(max_tick(&text) >= before + 4, "before {before}: {text}");
    env.ok(&p, &["down", "-t", "1"]);
    assert_gone(&env, "e2e-scale", &["e2e-scale-web-1"], &[first]);
}
