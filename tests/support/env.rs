//! A test's own berth: a state root and project directories in a temporary directory, and the
//! berth binary run on them (shared by the end-to-end tests).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Whether this test runs as root (the end-to-end tests need it, and pass as skipped without).
pub fn root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Whether process `pid` is alive (not a zombie).
pub fn alive(pid: i64) -> bool {
    berth::runtime::linux::process_starttime(pid as i32).is_some()
}

/// A container's init pid, from a `ps --format json` object (0 when it has none).
pub fn pid(c: &serde_json::Value) -> i64 {
    c["Pid"].as_i64().unwrap_or(0)
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub state: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        Env { dir, state }
    }

    /// A project directory with this berth.yaml.
    pub fn project(&self, name: &str, yaml: &str) -> PathBuf {
        let d = self.dir.path().join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join("berth.yaml"), yaml).expect("write");
        d
    }

    /// berth with `args` in `project`, on this test's state root.
    pub fn command(&self, project: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
        c.args(args)
            .current_dir(project)
            .env("BERTH_ROOT", &self.state)
            .env_remove("COMPOSE_FILE")
            .env_remove("COMPOSE_PROJECT_NAME");
        c
    }

    pub fn berth(&self, project: &Path, args: &[&str]) -> Output {
        self.command(project, args).output().expect("run berth")
    }

    pub fn ok(&self, project: &Path, args: &[&str]) -> String {
        let o = self.berth(project, args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success(),
            "berth {args:?} failed: {}\n{}\n{err}",
            tail(&err),
            String::from_utf8_lossy(&o.stdout),
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `ps -a --format json`, as (name -> (state, pid, restarts, exit code, health)).
    pub fn ps(&self, project: &Path) -> Vec<serde_json::Value> {
        self.ok(project, &["ps", "-a", "--format", "json"])
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn container(&self, project: &Path, name: &str) -> serde_json::Value {
        self.ps(project)
            .into_iter()
            .find(|c| c["Name"] == name)
            .unwrap_or(serde_json::Value::Null)
    }

    pub fn supervisor_pid(&self, project: &str) -> Option<i32> {
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

    pub fn supervisor_log(&self, project: &str) -> String {
        std::fs::read_to_string(
            self.state
                .join("projects")
                .join(project)
                .join("supervisor.log"),
        )
        .unwrap_or_default()
    }
}

/// The last lines of a command's output, put first in a failure's message: CI's summary of a
/// failed test keeps only the beginning of it, and the reason is usually at the end.
#[allow(dead_code)]
pub fn tail(out: &str) -> String {
    let lines: Vec<&str> = out.lines().collect();
    format!("…{}", lines[lines.len().saturating_sub(6)..].join("\n"))
}

/// How many times slower than this development machine the tests run here:
/// `BERTH_TEST_SLOWDOWN`, or 6 in the emulated VM of `.ci/` (it sets `VM_RUN`), 1 otherwise.
/// Every deadline a test waits for goes through `scaled`; a deadline is an upper bound, so a
/// generous factor costs only time when something is wrong.
pub fn slowdown() -> u32 {
    std::env::var("BERTH_TEST_SLOWDOWN")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(if std::env::var_os("VM_RUN").is_some() {
            6
        } else {
            1
        })
}

/// A deadline measured on this development machine, for the machine the tests run on.
pub fn scaled(d: Duration) -> Duration {
    d * slowdown()
}

/// Polls `f` until it holds or `limit` (scaled to this machine's speed) passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + scaled(limit);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// Takes a project down when dropped: a failing test leaves nothing behind either.
pub struct DownOnDrop<'a> {
    env: &'a Env,
    dir: PathBuf,
}

impl Env {
    pub fn down_on_drop(&self, dir: &Path) -> DownOnDrop<'_> {
        DownOnDrop {
            env: self,
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for DownOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self
            .env
            .berth(&self.dir, &["down", "-t", "0", "--progress", "quiet"]);
    }
}
