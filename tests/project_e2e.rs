//! End to end: the berth binary on real projects (`image: host`), as a user runs it. Root
//! required (CI runs as root). Each test has its own state root, project directory and project
//! names, and checks that `down` leaves nothing of its project behind.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use berth::runtime::linux::cgroup::Cgroup;

#[path = "support/env.rs"]
mod env;
use env::{Env, alive, eventually, pid, root, scaled, slowdown};

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
    std::thread::sleep(scaled(Duration::from_millis(1500)));
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
    let logs = env.ok(&p, &["logs", "crash"]);
    assert_eq!(
        logs.matches("crashing").count(),
        4,
        "{logs}\n{}",
        env.supervisor_log("e2e-restart")
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
        t.elapsed() < scaled(Duration::from_secs(2)),
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
    let child = env
        .command(&p, &["logs", "-f", "--no-color"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(scaled(Duration::from_millis(1500)));
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

/// A clock reading each service prints when it starts (ns since the epoch, from `date`).
fn stamp(logs: &str, container: &str, word: &str) -> u128 {
    logs.lines()
        .filter(|l| {
            l.split_once(" |")
                .is_some_and(|(name, _)| name.trim_end() == container)
        })
        .find_map(|l| {
            let rest = l.split_once(&format!("{word} "))?.1;
            rest.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("no `{word}` stamp of {container} in:\n{logs}"))
}

#[test]
fn health_gates_and_completed_jobs_order_the_start() {
    if !root() {
        return;
    }
    let env = Env::new();
    let p = env.project(
        "h",
        "name: e2e-health
services:
  db:
    image: host
    command: [sh, -c, 'echo start $$(date +%s%N); sleep 1; touch /tmp/ready; echo ready $$(date +%s%N); exec sleep 1000']
    healthcheck:
      test: [CMD-SHELL, 'test -e /tmp/ready']
      interval: 200ms
      start_interval: 200ms
      start_period: 5s
      retries: 3
  migrate:
    image: host
    command: [sh, -c, 'echo start $$(date +%s%N); sleep 0.3; echo done $$(date +%s%N)']
    depends_on:
      db: {condition: service_healthy}
  web:
    image: host
    command: [sh, -c, 'echo start $$(date +%s%N); exec sleep 1000']
    depends_on:
      db: {condition: service_healthy}
      migrate: {condition: service_completed_successfully}
  worker:
    image: host
    command: [sh, -c, 'echo start $$(date +%s%N); exec sleep 1000']
    depends_on: [db]
",
    );
    let _d = Down(&env, p.clone());
    // --wait returns 0: db healthy, web and worker running, the job completed with 0.
    env.ok(&p, &["up", "-d", "--wait", "--progress", "plain"]);
    let ps = env.ps(&p);
    let by = |n: &str| {
        ps.iter()
            .find(|c| c["Name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("{n} missing in {ps:?}"))
    };
    assert_eq!(by("e2e-health-db-1")["State"], "running");
    assert_eq!(by("e2e-health-db-1")["Health"], "healthy");
    assert_eq!(by("e2e-health-migrate-1")["State"], "exited");
    assert_eq!(by("e2e-health-migrate-1")["ExitCode"], 0);
    assert_eq!(by("e2e-health-web-1")["State"], "running");
    assert_eq!(by("e2e-health-worker-1")["State"], "running");

    let logs = env.ok(&p, &["logs", "--no-color"]);
    let db_start = stamp(&logs, "e2e-health-db-1", "start");
    let db_ready = stamp(&logs, "e2e-health-db-1", "ready");
    let migrate_start = stamp(&logs, "e2e-health-migrate-1", "start");
    let migrate_done = stamp(&logs, "e2e-health-migrate-1", "done");
    let web_start = stamp(&logs, "e2e-health-web-1", "start");
    let worker_start = stamp(&logs, "e2e-health-worker-1", "start");
    // The job waits for db's health, web for the job's success; worker only for db's start,
    // so it does not wait for the health check (no level barrier).
    assert!(
        migrate_start > db_ready,
        "migrate started before db was healthy"
    );
    assert!(
        web_start > migrate_done,
        "web started before migrate completed"
    );
    assert!(worker_start > db_start);
    assert!(
        worker_start < db_ready,
        "worker waited for db's health check"
    );

    let pids: Vec<i64> = env.ps(&p).iter().map(pid).filter(|p| *p > 0).collect();
    env.ok(&p, &["down", "-t", "0"]);
    assert_gone(
        &env,
        "e2e-health",
        &[
            "e2e-health-db-1",
            "e2e-health-migrate-1",
            "e2e-health-web-1",
            "e2e-health-worker-1",
        ],
        &pids,
    );
}

#[test]
fn up_wait_fails_when_a_job_fails_or_a_service_turns_unhealthy() {
    if !root() {
        return;
    }
    let env = Env::new();
    let p = env.project(
        "j",
        "name: e2e-job
services:
  job:
    image: host
    command: [sh, -c, 'sleep 0.2; exit 4']
  app:
    image: host
    command: [sleep, '1000']
    depends_on:
      job: {condition: service_completed_successfully}
",
    );
    let _d = Down(&env, p.clone());
    let o = env.berth(&p, &["up", "-d", "--wait", "--progress", "plain"]);
    assert!(!o.status.success(), "a failed job must fail --wait");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("e2e-job-job-1"), "{err}");
    env.ok(&p, &["down", "-t", "0"]);

    let q = env.project(
        "u",
        "name: e2e-unhealthy
services:
  api:
    image: host
    command: [sleep, '1000']
    healthcheck:
      test: [CMD-SHELL, 'echo no database; exit 1']
      interval: 100ms
      retries: 2
",
    );
    let _e = Down(&env, q.clone());
    let o = env.berth(&q, &["up", "-d", "--wait", "--progress", "plain"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unhealthy"), "{err}");
    assert!(
        err.contains("no database"),
        "the check's output is shown: {err}"
    );
    env.ok(&q, &["down", "-t", "0"]);
    assert_gone(&env, "e2e-unhealthy", &["e2e-unhealthy-api-1"], &[]);
}

#[test]
fn exec_runs_inside_the_container() {
    if !root() {
        return;
    }
    let env = Env::new();
    let p = env.project(
        "x",
        "name: e2e-exec
services:
  web:
    image: host
    hostname: exec-host
    command: [sleep, '1000']
    mem_limit: 48m
    environment:
      COLOR: blue
  idle:
    image: host
    command: [sh, -c, 'exit 0']
",
    );
    let _d = Down(&env, p.clone());
    env.ok(&p, &["up", "-d", "--progress", "quiet"]);
    let web = pid(&env.container(&p, "e2e-exec-web-1"));

    // Its hostname, its PID namespace (init is 1, the service 2; nothing of the host), its
    // environment, and only stdio open.
    let out = env.ok(
        &p,
        &[
            "exec",
            "-T",
            "web",
            "sh",
            "-c",
            "hostname; ls /proc | grep -c '^[0-9]'; cat /proc/1/comm; echo $COLOR; ls /proc/self/fd | tr '\\n' ' '",
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "exec-host", "{out}");
    // init, the service, sh, and ls/grep: a handful, not the host's hundreds.
    let n: u32 = lines[1].parse().unwrap();
    assert!((3..=6).contains(&n), "{n} processes visible: {out}");
    assert_eq!(lines[2], "berth-init");
    assert_eq!(lines[3], "blue");
    assert_eq!(
        lines[4].trim(),
        "0 1 2 3",
        "only stdio (and ls's own fd): {out}"
    );

    // -e, -u, -w; the exit status is the command's; stdin reaches it.
    let out = env.ok(
        &p,
        &[
            "exec",
            "-T",
            "-e",
            "COLOR=red",
            "-u",
            "nobody",
            "-w",
            "/tmp",
            "web",
            "sh",
            "-c",
            "echo $COLOR; id -un; pwd",
        ],
    );
    assert_eq!(out, "red\nnobody\n/tmp\n");
    let o = env.berth(&p, &["exec", "-T", "web", "sh", "-c", "exit 9"]);
    assert_eq!(o.status.code(), Some(9));
    let o = env.berth(&p, &["exec", "-T", "web", "no-such-command"]);
    assert_eq!(o.status.code(), Some(127));
    let mut child = env
        .command(
            &p,
            &["exec", "-T", "web", "sh", "-c", "read x; echo got $x"],
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got hello\n");

    // Its limits: a detached exec's process is in the container's cgroup, whose memory limit
    // is the service's.
    env.ok(&p, &["exec", "-d", "web", "sleep", "321"]);
    let cg = Cgroup::open("e2e-exec/e2e-exec-web-1")
        .unwrap()
        .expect("cgroup");
    let procs = cg.procs();
    let sleeper = procs
        .iter()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.starts_with("sleep\x00321"))
        })
        .copied()
        .unwrap_or_else(|| panic!("the exec'd process is not in the cgroup: {procs:?}"));
    let memdir = cg
        .dirs
        .iter()
        .find(|(c, _)| c == "memory" || c.is_empty())
        .map(|(_, d)| d.clone())
        .expect("memory cgroup");
    let limit = ["memory.max", "memory.limit_in_bytes"]
        .iter()
        .find_map(|f| std::fs::read_to_string(memdir.join(f)).ok())
        .unwrap();
    assert_eq!(limit.trim(), (48 * 1024 * 1024).to_string());
    // The exec'd process is in the container's PID namespace.
    let ns = |p: i64| std::fs::read_link(format!("/proc/{p}/ns/pid")).unwrap();
    assert_eq!(ns(sleeper as i64), ns(web));

    // A stopped service: a clear error.
    assert!(eventually(Duration::from_secs(5), || env
        .container(&p, "e2e-exec-idle-1")["State"]
        == "exited"));
    let o = env.berth(&p, &["exec", "-T", "idle", "true"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not running"));

    env.ok(&p, &["down", "-t", "0"]);
    assert_gone(
        &env,
        "e2e-exec",
        &["e2e-exec-web-1", "e2e-exec-idle-1"],
        &[web, sleeper as i64],
    );
}

/// What every process of a container has open, as `/proc/<pid>/fd` links, from the host.
fn open_files(project: &str, container: &str) -> Vec<(u32, String)> {
    let cg = Cgroup::open(&format!("{project}/{container}"))
        .unwrap()
        .expect("cgroup");
    let mut out = Vec::new();
    for p in cg.procs() {
        for e in std::fs::read_dir(format!("/proc/{p}/fd"))
            .into_iter()
            .flatten()
        {
            if let Ok(l) = std::fs::read_link(e.unwrap().path()) {
                out.push((p, l.to_string_lossy().into_owned()));
            }
        }
    }
    out
}

#[test]
fn a_process_left_behind_by_exec_cannot_reach_the_callers_terminal_or_files() {
    if !root() {
        return;
    }
    let scale = slowdown();
    let env = Env::new();
    let p = env.project(
        "x",
        "name: e2e-leak
services:
  web:
    image: host
    command: [sleep, '1000']
    network_mode: none
",
    );
    let _d = Down(&env, p.clone());
    env.ok(&p, &["up", "-d", "--progress", "quiet"]);
    // Keeps the descriptors exec gave it on 3-5 (a background job's stdin would be /dev/null),
    // waits until exec has returned, then reads what the caller types next and writes where
    // the caller's output goes.
    let left_behind = format!(
        "exec 3<&0 4>&1 5>&2; (sleep {}; cat <&3 > /tmp/typed-$0; echo LEAK-OUT >&4; \
         echo LEAK-ERR >&5) & echo started",
        scale
    );
    let out_path = env.dir.path().join("caller-output");

    // 1. `exec -T` from a terminal: stdin is the caller's terminal (a pty of the test's).
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let slave_path = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&pty.slave)
    ))
    .unwrap();
    let out = std::fs::File::create(&out_path).unwrap();
    let o = env
        .command(&p, &["exec", "-T", "web", "sh", "-c", &left_behind, "tty"])
        .stdin(std::fs::File::from(pty.slave.try_clone().unwrap()))
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .status()
        .unwrap();
    assert!(o.success());
    // 2. `exec` with stdin redirected from a pipe (no terminal) and output to a file.
    let mut child = env
        .command(&p, &["exec", "web", "sh", "-c", &left_behind, "pipe"])
        .stdin(std::process::Stdio::piped())
        .stdout(
            std::fs::OpenOptions::new()
                .append(true)
                .open(&out_path)
                .unwrap(),
        )
        .stderr(
            std::fs::OpenOptions::new()
                .append(true)
                .open(&out_path)
                .unwrap(),
        )
        .spawn()
        .unwrap();
    let mut caller_stdin = child.stdin.take().unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(
        std::fs::read_to_string(&out_path).unwrap(),
        "started\nstarted\n"
    );

    // Both have returned; what they left behind is still there, and holds no descriptor of
    // the caller's: not the terminal, not the output file, not the stdin pipe.
    let pipe_ino = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&caller_stdin)
    ))
    .unwrap();
    let files = open_files("e2e-leak", "e2e-leak-web-1");
    assert!(
        files.iter().any(|(_, l)| l.starts_with("pipe:")),
        "{files:?}"
    );
    for (pid, l) in &files {
        let l = std::path::Path::new(l);
        assert!(
            l != slave_path && l != out_path && l != pipe_ino,
            "process {pid} of the container holds the caller's {}",
            l.display()
        );
    }
    // The caller types on: nothing of it reaches the container, and nothing it writes reaches
    // the caller's output.
    {
        use std::io::Write;
        nix::unistd::write(&pty.master, b"secret-typed\n").unwrap();
        let _ = caller_stdin.write_all(b"secret-piped\n");
    }
    std::thread::sleep(scaled(Duration::from_millis(2500)));
    let typed = env.ok(
        &p,
        &[
            "exec",
            "-T",
            "web",
            "sh",
            "-c",
            "cat /tmp/typed-tty /tmp/typed-pipe",
        ],
    );
    assert!(!typed.contains("secret"), "the container read: {typed}");
    assert_eq!(
        std::fs::read_to_string(&out_path).unwrap(),
        "started\nstarted\n",
        "the container wrote to the caller's file"
    );
    env.ok(&p, &["down", "-t", "0"]);
}

#[test]
fn enable_writes_a_valid_boot_unit_and_ls_shows_it() {
    if !root() {
        return;
    }
    let env = Env::new();
    let units = env.dir.path().join("units");
    let p = env.project(
        "b",
        "name: e2e-boot
services:
  web:
    image: host
    command: [sleep, '1000']
",
    );
    let _d = Down(&env, p.clone());
    let berth = |args: &[&str]| {
        env.command(&p, args)
            .env("BERTH_SYSTEMD_DIR", &units)
            .output()
            .unwrap()
    };
    assert!(berth(&["enable", "--now"]).status.success());
    let unit = units.join("berth-e2e-boot.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(text.contains("\"up\" \"-d\""), "{text}");
    assert!(
        units
            .join("multi-user.target.wants/berth-e2e-boot.service")
            .exists()
    );
    match Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
    {
        Ok(o) => assert!(
            o.status.success(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(_) => assert!(
            std::env::var_os("CI").is_none(),
            "CI installs systemd-analyze (.ci/run)"
        ),
    }
    let ls = String::from_utf8_lossy(&berth(&["ls", "--format", "json"]).stdout).into_owned();
    let rows: serde_json::Value = serde_json::from_str(&ls).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["Name"] == "e2e-boot")
        .cloned()
        .unwrap_or_else(|| panic!("{ls}"));
    assert_eq!(row["Enabled"], true);
    assert_eq!(row["Status"], "running(1)");

    assert!(berth(&["disable"]).status.success());
    assert!(!unit.exists());
    assert!(
        !units
            .join("multi-user.target.wants/berth-e2e-boot.service")
            .exists()
    );
    let ls = String::from_utf8_lossy(&berth(&["ls", "--format", "json"]).stdout).into_owned();
    assert!(ls.contains("\"Enabled\":false"), "{ls}");
    let web = pid(&env.container(&p, "e2e-boot-web-1"));
    env.ok(&p, &["down", "-t", "0"]);
    assert_gone(&env, "e2e-boot", &["e2e-boot-web-1"], &[web]);
}

#[test]
fn stats_reports_cpu_memory_disk_and_pids_from_the_kernel() {
    if !root() {
        return;
    }
    let env = Env::new();
    let p = env.project(
        "st",
        "name: e2e-stats
services:
  busy:
    image: host
    command: [sh, -c, 'dd if=/dev/zero of=/tmp/blob bs=1M count=6 2>/dev/null; while :; do :; done']
    mem_limit: 64m
    cpus: 0.5
",
    );
    let _d = Down(&env, p.clone());
    env.ok(&p, &["up", "-d", "--progress", "quiet"]);
    let busy = pid(&env.container(&p, "e2e-stats-busy-1"));
    std::thread::sleep(scaled(Duration::from_millis(500)));
    let out = env.ok(&p, &["stats", "--no-stream", "--format", "json"]);
    let row: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(row["Name"], "e2e-stats-busy-1");
    let cpu = row["CPUPerc"].as_f64().unwrap();
    // A busy loop held to half a core by its CFS quota.
    assert!(cpu > 5.0 && cpu < 70.0, "CPU {cpu}%: {out}");
    assert_eq!(row["MemLimit"], 64 * 1024 * 1024);
    assert!(row["MemUsage"].as_u64().unwrap() > 0);
    // sh and the loop (or dd): the cgroup's own count.
    assert!(row["Pids"].as_u64().unwrap() >= 1, "{out}");
    assert!(
        row["Disk"].as_u64().unwrap() >= 6 * 1024 * 1024,
        "the 6 MiB written count: {out}"
    );
    let table = env.ok(&p, &["stats", "--no-stream"]);
    assert!(table.contains("64.00MiB"), "{table}");
    env.ok(&p, &["down", "-t", "0"]);
    assert_gone(&env, "e2e-stats", &["e2e-stats-busy-1"], &[busy]);
}

#[test]
fn events_stream_what_every_berth_process_did() {
    if !root() {
        return;
    }
    let env = Env::new();
    let p = env.project(
        "ev",
        "name: e2e-events
services:
  web:
    image: host
    command: [sleep, '1000']
  crash:
    image: host
    command: [sh, -c, 'sleep 0.5; exit 3']
",
    );
    let _d = Down(&env, p.clone());
    let child = env
        .command(&p, &["-p", "e2e-events", "events", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(scaled(Duration::from_millis(300)));
    env.ok(&p, &["up", "-d", "--progress", "quiet"]);
    env.ok(&p, &["exec", "-T", "web", "true"]);
    env.ok(&p, &["pause", "web"]);
    env.ok(&p, &["unpause", "web"]);
    // The supervisor sees crash exit.
    assert!(eventually(Duration::from_secs(5), || {
        std::fs::read_to_string(env.state.join("events/e2e-events.jsonl"))
            .is_ok_and(|t| t.contains("\"die\""))
    }));
    env.ok(&p, &["down", "-t", "0"]);
    std::thread::sleep(scaled(Duration::from_millis(300)));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let out = child.wait_with_output().unwrap();
    let events: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|e| {
            (
                e["action"].as_str().unwrap_or_default().to_string(),
                e["id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let has = |a: &str, id: &str| events.iter().any(|(x, y)| x == a && y == id);
    for (a, id) in [
        ("create", "e2e-events-web-1"),
        ("start", "e2e-events-web-1"),
        ("exec_start", "e2e-events-web-1"),
        ("pause", "e2e-events-web-1"),
        ("unpause", "e2e-events-web-1"),
        ("die", "e2e-events-crash-1"),
        ("stop", "e2e-events-web-1"),
        ("destroy", "e2e-events-web-1"),
        ("destroy", "e2e-events-crash-1"),
    ] {
        assert!(has(a, id), "no {a} of {id} in {events:?}");
    }
    let at = |a: &str| {
        events
            .iter()
            .position(|(x, y)| x == a && y == "e2e-events-web-1")
    };
    assert!(at("create") < at("start") && at("start") < at("destroy"));
}

#[test]
fn an_unhealthy_service_with_a_restart_policy_is_restarted_unless_it_opts_out() {
    if !root() {
        return;
    }
    let env = Env::new();
    let p = env.project(
        "uh",
        "name: e2e-uh
services:
  flaky:
    image: host
    restart: always
    command: [sleep, '1000']
    healthcheck:
      test: [CMD, 'false']
      interval: 100ms
      retries: 2
  stays:
    image: host
    restart: always
    command: [sleep, '1000']
    labels:
      berth.restart-unhealthy: 'false'
    healthcheck:
      test: [CMD, 'false']
      interval: 100ms
      retries: 2
",
    );
    let _d = Down(&env, p.clone());
    env.ok(&p, &["up", "-d", "--progress", "quiet"]);
    let flaky = pid(&env.container(&p, "e2e-uh-flaky-1"));
    let stays = pid(&env.container(&p, "e2e-uh-stays-1"));
    assert!(
        eventually(Duration::from_secs(10), || {
            let c = env.container(&p, "e2e-uh-flaky-1");
            // Restarted, and not the first run any more: between its runs (unhealthy again
            // within a second, then a growing backoff) it has no pid, and on a slow machine a
            // poll rarely lands inside a run.
            c["RestartCount"].as_u64().unwrap_or(0) >= 1 && pid(&c) != flaky
        }),
        "flaky was not restarted: {}",
        env.supervisor_log("e2e-uh")
    );
    assert!(
        env.supervisor_log("e2e-uh")
            .contains("unhealthy, restarting it")
    );
    let s = env.container(&p, "e2e-uh-stays-1");
    assert_eq!(s["Health"], "unhealthy");
    assert_eq!(pid(&s), stays, "the opted-out service keeps its process");
    assert_eq!(s["RestartCount"], 0);
    let now = pid(&env.container(&p, "e2e-uh-flaky-1"));
    env.ok(&p, &["down", "-t", "0"]);
    assert_gone(
        &env,
        "e2e-uh",
        &["e2e-uh-flaky-1", "e2e-uh-stays-1"],
        &[flaky, stays, now],
    );
}

#[test]
fn create_makes_containers_that_start_later() {
    if !root() {
        return;
    }
    let env = Env::new();
    let p = env.project("create", &two_services("e2e-create"));
    let _d = Down(&env, p.clone());
    // It returns (as `up --no-start` does) with every container created and none running.
    let o = env
        .command(&p, &["create", "--progress", "plain"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ps = env.ps(&p);
    assert_eq!(ps.len(), 2, "{ps:?}");
    assert!(
        ps.iter().all(|c| c["State"] == "created" && pid(c) == 0),
        "{ps:?}"
    );
    // The supervisor is there for what `start` will start, and leaves them created meanwhile.
    assert!(env.supervisor_pid("e2e-create").is_some());
    std::thread::sleep(scaled(Duration::from_millis(500)));
    let ps = env.ps(&p);
    assert!(ps.iter().all(|c| c["State"] == "created"), "{ps:?}");
    env.ok(&p, &["start"]);
    let ps = env.ps(&p);
    assert!(ps.iter().all(|c| c["State"] == "running"), "{ps:?}");
}

#[test]
fn cp_copies_both_ways_and_never_leaves_the_container() {
    if !root() {
        return;
    }
    let env = Env::new();
    let p = env.project("cp", &two_services("e2e-cp"));
    let _d = Down(&env, p.clone());
    env.ok(&p, &["up", "-d", "--wait"]);
    let src = env.dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("f1"), "one").unwrap();
    std::fs::write(src.join("sub/f2"), "two").unwrap();
    std::os::unix::fs::symlink("f1", src.join("link")).unwrap();
    let s = src.to_str().unwrap();
    // In: a directory under its name into an existing one, a file under a new name.
    env.ok(&p, &["cp", s, "web:/tmp"]);
    env.ok(&p, &["cp", &format!("{s}/f1"), "web:/tmp/renamed"]);
    let listing = env.ok(&p, &["exec", "-T", "web", "sh", "-c", "cat /tmp/src/f1 /tmp/src/sub/f2 /tmp/renamed; readlink /tmp/src/link; stat -c %u /tmp/src/f1"]);
    assert_eq!(listing, "onetwoonef1\n0\n");
    // Out: the tree comes back; a symlink is copied as a symlink.
    let out = env.dir.path().join("out");
    env.ok(&p, &["cp", "web:/tmp/src", out.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(out.join("sub/f2")).unwrap(), "two");
    assert_eq!(
        std::fs::read_link(out.join("link")).unwrap(),
        std::path::Path::new("f1")
    );
    // A symlink the container made resolves inside the container, never on the host.
    env.ok(
        &p,
        &[
            "exec",
            "-T",
            "web",
            "sh",
            "-c",
            "mkdir -p /tmp/d && ln -s / /tmp/d/up",
        ],
    );
    let host_file = env.dir.path().join("escape-target");
    let evil = format!("web:/tmp/d/up{}", host_file.display());
    env.ok(&p, &["cp", &format!("{s}/f1"), &evil]);
    assert!(
        !host_file.exists(),
        "cp wrote through a container symlink onto the host"
    );
    let o = env.berth(
        &p,
        &[
            "cp",
            "web:/tmp/d/up/etc/shadow",
            out.join("shadow").to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    assert!(!out.join("shadow").exists());
    // A host symlink left by an earlier copy (of a container's symlink) is replaced, never
    // followed, when the container's path has become a directory.
    let hostdir = env.dir.path().join("hostdir");
    std::fs::create_dir_all(&hostdir).unwrap();
    let bk = out.join("bk");
    env.ok(
        &p,
        &[
            "exec",
            "-T",
            "web",
            "sh",
            "-c",
            &format!("mkdir /tmp/par && ln -s {} /tmp/par/lnk", hostdir.display()),
        ],
    );
    env.ok(&p, &["cp", "web:/tmp/par/.", bk.to_str().unwrap()]);
    assert!(
        std::fs::symlink_metadata(bk.join("lnk"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    env.ok(
        &p,
        &[
            "exec",
            "-T",
            "web",
            "sh",
            "-c",
            "rm /tmp/par/lnk && mkdir /tmp/par/lnk && echo x > /tmp/par/lnk/pwn",
        ],
    );
    env.ok(&p, &["cp", "web:/tmp/par/.", bk.to_str().unwrap()]);
    assert!(
        !hostdir.join("pwn").exists(),
        "cp wrote through a host symlink"
    );
    assert!(bk.join("lnk/pwn").is_file());
    // A stopped container says what to do.
    env.ok(&p, &["stop", "worker"]);
    let o = env.berth(&p, &["cp", "worker:/etc/hostname", out.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not running"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The host directory of `pid`'s cgroup in the hierarchy of `controller` ("" on cgroup v2).
fn cgroup_dir(pid: i64, controller: &str) -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        if ctrls.split(',').any(|c| c == controller) {
            return Some(
                std::path::Path::new("/sys/fs/cgroup")
                    .join(controller)
                    .join(path.trim_start_matches('/')),
            );
        }
        if ctrls.is_empty() && std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            return Some(std::path::Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/')));
        }
    }
    None
}

#[test]
fn cpu_period_quota_cpuset_swappiness_groups_oom_score_and_devices_apply() {
    if !root() {
        return;
    }
    let env = Env::new();
    let p = env.project(
        "knobs",
        "name: e2e-knobs\nservices:\n  app:\n    image: host\n    network_mode: none\n    command: [sleep, '1000']\n    cpu_period: 50000\n    cpu_quota: 25000\n    cpuset: '0'\n    mem_swappiness: 10\n    group_add: [4242, root]\n    oom_score_adj: 500\n    devices: ['/dev/zero:/dev/berth-zero']\n  hostns:\n    image: host\n    network_mode: none\n    command: [sleep, '1000']\n    ipc: host\n    uts: host\n",
    );
    let _d = Down(&env, p.clone());
    let host_name = nix::unistd::gethostname().unwrap().into_string().unwrap();
    env.ok(&p, &["up", "-d", "--wait"]);
    // ipc: host and uts: host share the host's namespaces; the host keeps its name.
    let ns = env.ok(
        &p,
        &[
            "exec",
            "-T",
            "hostns",
            "sh",
            "-c",
            "readlink /proc/self/ns/ipc /proc/self/ns/uts; hostname",
        ],
    );
    let host_ns = |k: &str| {
        std::fs::read_link(format!("/proc/self/ns/{k}"))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    assert!(
        ns.contains(&host_ns("ipc")) && ns.contains(&host_ns("uts")),
        "{ns}"
    );
    assert!(ns.contains(&host_name), "{ns}");
    let own = env.ok(&p, &["exec", "-T", "app", "readlink", "/proc/self/ns/ipc"]);
    assert!(!own.contains(&host_ns("ipc")), "{own}");
    assert_eq!(
        nix::unistd::gethostname().unwrap().into_string().unwrap(),
        host_name
    );
    let inside = env.ok(
        &p,
        &["exec", "-T", "app", "sh", "-c", "grep ^Groups: /proc/self/status; cat /proc/self/oom_score_adj; test -c /dev/berth-zero && head -c 3 /dev/berth-zero | od -An -tx1; grep Cpus_allowed_list /proc/self/status"],
    );
    assert!(inside.contains("4242"), "{inside}");
    assert!(inside.contains("500"), "{inside}");
    assert!(inside.contains("00 00 00"), "{inside}");
    assert!(inside.contains("Cpus_allowed_list:\t0\n"), "{inside}");
    let pid = pid(&env.container(&p, "e2e-knobs-app-1"));
    let read = |ctrl: &str, f: &str| {
        cgroup_dir(pid, ctrl)
            .and_then(|d| std::fs::read_to_string(d.join(f)).ok())
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        assert_eq!(read("", "cpu.max"), "25000 50000");
        assert_eq!(read("", "cpuset.cpus"), "0");
    } else {
        assert_eq!(read("cpu", "cpu.cfs_period_us"), "50000");
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "25000");
        assert_eq!(read("cpuset", "cpuset.cpus"), "0");
        assert_eq!(read("memory", "memory.swappiness"), "10");
    }
    let unsupported = env.ok(&p, &["config", "--unsupported"]);
    assert!(unsupported.trim().is_empty(), "{unsupported}");
    // A device target through /dev/fd (a link to the setup process's descriptors, one of
    // them on the container's host directory) is refused, and nothing is made there.
    let q = env.project(
        "knobs-bad",
        "name: e2e-knobs-bad\nservices:\n  app:\n    image: host\n    network_mode: none\n    command: [sleep, '1000']\n    devices: ['/dev/zero:/dev/fd/5/evil']\n",
    );
    let _dq = Down(&env, q.clone());
    let o = env.berth(&q, &["up", "-d", "--wait"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("/dev/fd/5/evil"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let found = std::process::Command::new("find")
        .args([env.state.to_str().unwrap(), "-name", "evil"])
        .output()
        .unwrap();
    assert!(
        found.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&found.stdout)
    );
}

/// A run started by another berth command (`start`, `restart`) is watched by the supervisor,
/// and restarted by policy when it dies: also when the service has a health check, whose
/// prober of the run before must not make the supervisor think it still watches (it did, and
/// a `kill -9` of the new run was never answered), and also when the supervisor sees the old
/// run's end only after the new run began.
#[test]
fn a_run_started_by_another_command_is_watched_and_restarted_by_policy() {
    if !root() {
        return;
    }
    let env = Env::new();
    let p = env.project(
        "rk",
        "name: e2e-rk
services:
  keep:
    image: host
    command: [sleep, '1000']
    restart: always
    healthcheck:
      test: [CMD, 'true']
      interval: 30s
",
    );
    let _d = Down(&env, p.clone());
    // Awake: an idle supervisor learns of a new run from berth-idle instead.
    let o = env
        .command(&p, &["up", "-d", "--progress", "quiet"])
        .env("BERTH_IDLE_AFTER_MS", "off")
        .output()
        .expect("run berth");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let sup = env.supervisor_pid("e2e-rk").expect("supervisor");
    let signal = |s| nix::sys::signal::kill(nix::unistd::Pid::from_raw(sup), s).expect("signal");
    let killed_and_back = |round: &str| {
        let init = pid(&env.container(&p, "e2e-rk-keep-1"));
        assert!(init > 0);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(init as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill");
        assert!(
            eventually(Duration::from_secs(10), || {
                let c = env.container(&p, "e2e-rk-keep-1");
                c["State"] == "running" && pid(&c) != init && alive(pid(&c))
            }),
            "{round}: {:?}\n{}",
            env.container(&p, "e2e-rk-keep-1"),
            env.supervisor_log("e2e-rk")
        );
    };
    // stop, then start: the supervisor picks the new run up from the events file.
    env.ok(&p, &["stop", "-t", "0", "keep"]);
    env.ok(&p, &["start", "keep"]);
    std::thread::sleep(scaled(Duration::from_millis(1500)));
    killed_and_back("after stop and start");
    // restart, with the supervisor seeing the old end after the new start (stopped meanwhile).
    signal(nix::sys::signal::Signal::SIGSTOP);
    let restarted = env.berth(&p, &["restart", "-t", "0", "keep"]);
    signal(nix::sys::signal::Signal::SIGCONT);
    assert!(restarted.status.success());
    std::thread::sleep(scaled(Duration::from_millis(1500)));
    // `berth restart` is the user's, not a restart by policy: the count stays (the old run's
    // end, answered by policy, "restarted" the running container and counted it).
    let c = env.container(&p, "e2e-rk-keep-1");
    assert_eq!(
        c["RestartCount"],
        1,
        "{c:?}\n{}",
        env.supervisor_log("e2e-rk")
    );
    killed_and_back("after restart");
    let pids = vec![pid(&env.container(&p, "e2e-rk-keep-1"))];
    env.ok(&p, &["down", "-t", "0"]);
    assert_gone(&env, "e2e-rk", &["e2e-rk-keep-1"], &pids);
}

/// A loop device over a file, with an ext4 file system mounted: a block device of the test's
/// own for `blkio_config`. Detached and unmounted on drop.
struct LoopDisk {
    dev: String,
    mnt: PathBuf,
}

impl LoopDisk {
    fn new(dir: &std::path::Path) -> LoopDisk {
        let img = dir.join("blk.img");
        let mnt = dir.join("blk");
        std::fs::create_dir_all(&mnt).unwrap();
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(64 << 20).unwrap();
        let out = Command::new("losetup")
            .args(["-f", "--show", img.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "losetup: {out:?}");
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let disk = LoopDisk { dev, mnt };
        let ok = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
        ok(Command::new("mkfs.ext4").args(["-q", "-F", &disk.dev]));
        ok(Command::new("mount").args([&disk.dev, disk.mnt.to_str().unwrap()]));
        disk
    }

    fn numbers(&self) -> String {
        use std::os::unix::fs::MetadataExt;
        let rdev = std::fs::metadata(&self.dev).unwrap().rdev();
        format!(
            "{}:{}",
            nix::sys::stat::major(rdev),
            nix::sys::stat::minor(rdev)
        )
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// Every limit a user sets lands in the cgroup file of the host's version, spelled as that
/// version spells it (v2: `cpu.weight` converted from `cpu_shares` as runc 1.3 converts it,
/// `memory.low`, `memory.swap.max` as swap alone, `io.max`; v1: `cpu.shares`,
/// `memory.soft_limit_in_bytes`, `memsw` as memory plus swap, `blkio.throttle.*`), the block
/// I/O throttle holds a writer to its rate, `pause` freezes the cgroup, and `down` empties it.
#[test]
fn each_limit_reaches_the_cgroup_file_of_the_hosts_version_and_blkio_holds() {
    if !root() {
        return;
    }
    let env = Env::new();
    let disk = LoopDisk::new(env.dir.path());
    let p = env.project(
        "cgfiles",
        &format!(
            "name: e2e-cgfiles\nservices:\n  app:\n    image: host\n    network_mode: none\n    command: [sleep, '1000']\n    cpu_shares: 512\n    mem_limit: 64m\n    mem_reservation: 32m\n    memswap_limit: 96m\n    pids_limit: 40\n    volumes: ['{mnt}:/data']\n    blkio_config:\n      device_write_bps: [{{path: {dev}, rate: 1mb}}]\n      device_read_iops: [{{path: {dev}, rate: 500}}]\n",
            mnt = disk.mnt.display(),
            dev = disk.dev
        ),
    );
    let _d = Down(&env, p.clone());
    env.ok(&p, &["up", "-d", "--wait"]);
    let pid = pid(&env.container(&p, "e2e-cgfiles-app-1"));
    let read = |ctrl: &str, f: &str| {
        cgroup_dir(pid, ctrl)
            .and_then(|d| std::fs::read_to_string(d.join(f)).ok())
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let has = |ctrl: &str, f: &str| cgroup_dir(pid, ctrl).is_some_and(|d| d.join(f).exists());
    let nums = disk.numbers();
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if v2 {
        // runc 1.3's curve: 1024 -> 100, 512 -> 59.
        assert_eq!(read("", "cpu.weight"), "59");
        assert_eq!(read("", "memory.max"), (64u64 << 20).to_string());
        assert_eq!(read("", "memory.low"), (32u64 << 20).to_string());
        if has("", "memory.swap.max") {
            assert_eq!(read("", "memory.swap.max"), (32u64 << 20).to_string());
        }
        assert_eq!(read("", "pids.max"), "40");
        assert_eq!(
            read("", "io.max"),
            format!("{nums} rbps=max wbps=1048576 riops=500 wiops=max")
        );
    } else {
        assert_eq!(read("cpu", "cpu.shares"), "512");
        assert_eq!(
            read("memory", "memory.limit_in_bytes"),
            (64u64 << 20).to_string()
        );
        assert_eq!(
            read("memory", "memory.soft_limit_in_bytes"),
            (32u64 << 20).to_string()
        );
        if has("memory", "memory.memsw.limit_in_bytes") {
            assert_eq!(
                read("memory", "memory.memsw.limit_in_bytes"),
                (96u64 << 20).to_string()
            );
        }
        assert_eq!(read("pids", "pids.max"), "40");
        assert_eq!(
            read("blkio", "blkio.throttle.write_bps_device"),
            format!("{nums} 1048576")
        );
        assert_eq!(
            read("blkio", "blkio.throttle.read_iops_device"),
            format!("{nums} 500")
        );
    }
    // The throttle holds: 3 MiB written past the page cache at 1 MiB/s take over 2 s (without
    // it, milliseconds).
    let ns = env.ok(
        &p,
        &[
            "exec",
            "-T",
            "app",
            "sh",
            "-c",
            "s=$(date +%s%N); dd if=/dev/zero of=/data/f bs=256k count=12 oflag=direct 2>/dev/null; e=$(date +%s%N); echo $((e - s))",
        ],
    );
    let took = Duration::from_nanos(ns.trim().parse().unwrap_or(0));
    assert!(took > Duration::from_millis(1800), "3 MiB took {took:?}");
    // pause freezes the cgroup in the kernel; unpause thaws it.
    env.ok(&p, &["pause", "app"]);
    if v2 {
        assert!(read("", "cgroup.events").contains("frozen 1"));
    } else {
        assert_eq!(read("freezer", "freezer.state"), "FROZEN");
    }
    env.ok(&p, &["unpause", "app"]);
    if v2 {
        assert!(read("", "cgroup.events").contains("frozen 0"));
    } else {
        assert_eq!(read("freezer", "freezer.state"), "THAWED");
    }
    env.ok(&p, &["down", "-t", "0"]);
    assert_gone(&env, "e2e-cgfiles", &["e2e-cgfiles-app-1"], &[pid]);

    // Weights: v2's io.bfq.weight takes Compose's 10-1000 as it is, io.weight (1-10000) gets
    // it converted as runc does; v1 has them only with BFQ. Where the kernel has none, `up`
    // says so and starts nothing.
    let w = env.project(
        "cgweight",
        "name: e2e-cgweight\nservices:\n  app:\n    image: host\n    network_mode: none\n    command: [sleep, '1000']\n    blkio_config:\n      weight: 300\n",
    );
    let _dw = Down(&env, w.clone());
    let o = env.berth(&w, &["up", "-d", "--wait"]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    if o.status.success() {
        let pid = env::pid(&env.container(&w, "e2e-cgweight-app-1"));
        let dir = cgroup_dir(pid, if v2 { "" } else { "blkio" }).unwrap();
        let (file, all) = if v2 && !dir.join("io.bfq.weight").exists() {
            ("io.weight", "2930")
        } else if v2 {
            ("io.bfq.weight", "300")
        } else if dir.join("blkio.bfq.weight").exists() {
            ("blkio.bfq.weight", "300")
        } else {
            ("blkio.weight", "300")
        };
        let text = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(
            text.contains(&format!("default {all}")) || text.trim() == all,
            "{file}: {text}"
        );
    } else {
        // Only v1 without BFQ may lack a weight: v2 has io.weight wherever io.cost is built.
        assert!(!v2, "{err}");
        assert!(err.contains("weight") && err.contains("BFQ"), "{err}");
        assert!(env.ps(&w).iter().all(|c| c["State"] != "running"));
    }
    env.ok(&w, &["down", "-t", "0"]);
}

#[test]
fn lifecycle_hooks_run_in_the_container() {
    if !root() {
        return;
    }
    let env = Env::new();
    let p = env.project(
        "hooks",
        r#"name: e2e-hooks
services:
  app:
    image: host
    network_mode: none
    command: [sh, -c, 'trap "echo got-term; exit 0" TERM; while [ ! -f /tmp/started ]; do sleep 0.1; done; echo "saw $(cat /tmp/started)"; while true; do sleep 0.1; done']
    post_start:
      - command: [sh, -c, 'echo "$$GREETING as $(id -u)" > /tmp/started']
        environment: {GREETING: hello-from-hook}
        user: "1234"
    pre_stop:
      - command: echo pre-stop-ran
  broken:
    image: host
    network_mode: none
    command: [sleep, '1000']
    post_start:
      - command: [sh, -c, 'exit 3']
"#,
    );
    let _d = Down(&env, p.clone());
    // The failing hook fails the start, naming the container, the hook and the command.
    let out = env.berth(&p, &["up", "-d", "--progress", "plain"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(
            "broken (e2e-hooks-broken-1): post_start: hook 1 (`sh -c exit 3`) exited with status 3"
        ),
        "{err}"
    );
    // The one whose hook worked saw what its hook wrote, as the hook's user.
    assert!(
        eventually(scaled(Duration::from_secs(5)), || env
            .ok(&p, &["logs", "app"])
            .contains("saw hello-from-hook as 1234")),
        "{}",
        env.ok(&p, &["logs", "app"])
    );
    // pre_stop runs before the stop signal: its output is in the log, ahead of the service's
    // answer to SIGTERM.
    env.ok(&p, &["stop", "app"]);
    let logs = env.ok(&p, &["logs", "app"]);
    let (hook, term) = (logs.find("pre-stop-ran"), logs.find("got-term"));
    assert!(hook.is_some() && term.is_some() && hook < term, "{logs}");
    env.ok(&p, &["down"]);
}
