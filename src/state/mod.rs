//! What berth remembers about a project between commands, under
//! `<state root>/projects/<name>/`:
//!
//! - `project.json`: how the project was loaded (files, directory, env files, profiles), so the
//!   supervisor, `berth ls` and the boot unit can load it again;
//! - `lock`: one writer at a time (`up`, `down`, the supervisor) holds an exclusive `flock`;
//! - `supervisor.pid`: the supervisor's pid and start time;
//! - `status.json`: what only the supervisor knows (health, restart counts, a file edit that did
//!   not validate), written atomically, read by `ps`;
//! - `stopped/<container>`: containers the user stopped (`berth stop`), never restarted by policy.

use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::spec::LoadOptions;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path} is not a valid berth state file: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error(
        "project {project} is locked by another berth command (pid {holder}); try again when it is done"
    )]
    Busy { project: String, holder: String },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// How the project was loaded, enough to load it again the same way.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectRecord {
    pub name: String,
    pub working_dir: PathBuf,
    pub files: Vec<PathBuf>,
    #[serde(default)]
    pub env_files: Vec<PathBuf>,
    #[serde(default)]
    pub profiles: Vec<String>,
}

impl ProjectRecord {
    /// Load options that read the same files again (with this process's environment).
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            files: self.files.clone(),
            project_name: Some(self.name.clone()),
            project_directory: Some(self.working_dir.clone()),
            env_files: self.env_files.clone(),
            profiles: self.profiles.clone(),
            ..LoadOptions::from_process()
        }
    }

    /// The files whose edits the supervisor acts on: the project files and the `.env`.
    pub fn watched(&self) -> Vec<PathBuf> {
        let mut v = self.files.clone();
        if self.env_files.is_empty() {
            v.push(self.working_dir.join(".env"));
        } else {
            v.extend(self.env_files.iter().cloned());
        }
        v
    }
}

/// What the supervisor knows about one container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    #[serde(default)]
    pub restarts: u32,
    /// Waiting out the backoff before its next restart.
    #[serde(default)]
    pub restarting: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<i32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The last edit of the project file failed to load: the message (file:line: ...). The last
    /// good version keeps running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
    #[serde(default)]
    pub containers: std::collections::BTreeMap<String, ContainerStatus>,
}

/// One project's state directory.
#[derive(Debug, Clone)]
pub struct ProjectState {
    pub name: String,
    dir: PathBuf,
}

/// An exclusive hold on a project; released when dropped (or when the last process holding
/// the descriptor exits, which is how `up -d` hands it to the supervisor).
#[derive(Debug)]
pub struct Lock {
    pub fd: OwnedFd,
}

/// berth's state root: `BERTH_ROOT`, else /var/lib/berth.
pub fn default_root() -> PathBuf {
    std::env::var_os("BERTH_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/berth"))
}

/// A container's health, as `ps` shows it (the supervisor's health checks record it here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Starting,
    Healthy,
    Unhealthy,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    crate::sys::atomic_write(path, bytes).map_err(io_err("write", path))
}

/// Every project with a state directory under `root`.
pub fn projects(root: &Path) -> Vec<ProjectState> {
    let Ok(rd) = fs::read_dir(root.join("projects")) else {
        return Vec::new();
    };
    let mut v: Vec<ProjectState> = rd
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| ProjectState {
            name: e.file_name().to_string_lossy().into_owned(),
            dir: e.path(),
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

impl ProjectState {
    pub fn new(root: &Path, name: &str) -> ProjectState {
        ProjectState {
            name: name.to_string(),
            dir: root.join("projects").join(name),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn exists(&self) -> bool {
        self.dir.join("project.json").exists()
    }

    fn ensure(&self) -> Result<(), StateError> {
        fs::create_dir_all(&self.dir).map_err(io_err("create", &self.dir))
    }

    /// Takes the project's lock, waiting up to `wait` for another holder to finish.
    pub fn lock(&self, wait: Duration) -> Result<Lock, StateError> {
        use rustix::fs::{FlockOperation, flock};
        self.ensure()?;
        let path = self.dir.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let fd = OwnedFd::from(file);
        let deadline = std::time::Instant::now() + wait;
        loop {
            match flock(fd.as_fd(), FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(Lock { fd }),
                Err(rustix::io::Errno::WOULDBLOCK) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    return Err(StateError::Busy {
                        project: self.name.clone(),
                        holder: self
                            .supervisor()
                            .map_or("unknown".into(), |p| p.to_string()),
                    });
                }
                Err(e) => {
                    return Err(StateError::Io {
                        what: "lock",
                        path,
                        source: e.into(),
                    });
                }
            }
        }
    }

    pub fn record(&self) -> Result<ProjectRecord, StateError> {
        let path = self.dir.join("project.json");
        let text = fs::read_to_string(&path).map_err(io_err("read", &path))?;
        serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
            path,
            message: e.to_string(),
        })
    }

    pub fn write_record(&self, r: &ProjectRecord) -> Result<(), StateError> {
        self.ensure()?;
        let bytes = serde_json::to_vec_pretty(r).unwrap_or_default();
        atomic_write(&self.dir.join("project.json"), &bytes)
    }

    /// The state root this project's directory is in.
    pub fn root(&self) -> PathBuf {
        self.dir
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    pub fn status(&self) -> Status {
        fs::read_to_string(self.dir.join("status.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    pub fn write_status(&self, s: &Status) -> Result<(), StateError> {
        self.ensure()?;
        let bytes = serde_json::to_vec_pretty(s).unwrap_or_default();
        atomic_write(&self.dir.join("status.json"), &bytes)
    }

    /// The running supervisor's pid, if there is one (the pid file is checked against the
    /// process's start time, so a recycled pid is not taken for it).
    pub fn supervisor(&self) -> Option<i32> {
        let text = fs::read_to_string(self.dir.join("supervisor.pid")).ok()?;
        let (pid, start) = text.trim().split_once(' ')?;
        let pid: i32 = pid.parse().ok()?;
        let start: u64 = start.parse().ok()?;
        (crate::sys::process_starttime(pid) == Some(start)).then_some(pid)
    }

    pub fn write_supervisor(&self, pid: i32) -> Result<(), StateError> {
        let start = crate::sys::process_starttime(pid).unwrap_or(0);
        atomic_write(
            &self.dir.join("supervisor.pid"),
            format!("{pid} {start}\n").as_bytes(),
        )
    }

    pub fn clear_supervisor(&self) {
        let _ = fs::remove_file(self.dir.join("supervisor.pid"));
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("supervisor.log")
    }

    /// Marks a container as stopped by the user (or clears the mark).
    pub fn set_stopped(&self, container: &str, stopped: bool) -> Result<(), StateError> {
        let d = self.dir.join("stopped");
        if stopped {
            fs::create_dir_all(&d).map_err(io_err("create", &d))?;
            fs::write(d.join(container), b"").map_err(io_err("write", &d))
        } else {
            let _ = fs::remove_file(d.join(container));
            Ok(())
        }
    }

    pub fn is_stopped(&self, container: &str) -> bool {
        self.dir.join("stopped").join(container).exists()
    }

    /// Removes the project's state (after `down`).
    pub fn remove(&self) -> Result<(), StateError> {
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StateError::Io {
                what: "remove",
                path: self.dir.clone(),
                source: e,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_status_and_lock_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let st = ProjectState::new(d.path(), "demo");
        assert!(!st.exists());
        let r = ProjectRecord {
            name: "demo".into(),
            working_dir: "/w".into(),
            files: vec!["/w/berth.yaml".into()],
            ..ProjectRecord::default()
        };
        st.write_record(&r).unwrap();
        assert_eq!(st.record().unwrap(), r);
        assert_eq!(
            r.watched(),
            [PathBuf::from("/w/berth.yaml"), "/w/.env".into()]
        );
        let mut s = Status::default();
        s.containers.insert(
            "demo-web-1".into(),
            ContainerStatus {
                restarts: 2,
                ..Default::default()
            },
        );
        st.write_status(&s).unwrap();
        assert_eq!(st.status(), s);
        let held = st.lock(Duration::ZERO).unwrap();
        assert!(matches!(
            st.lock(Duration::from_millis(50)),
            Err(StateError::Busy { .. })
        ));
        drop(held);
        st.lock(Duration::ZERO).unwrap();
        assert_eq!(projects(d.path()).len(), 1);
        st.remove().unwrap();
        assert!(projects(d.path()).is_empty());
    }
}

/// One line of a project's event stream (`berth events`), in the shape of
/// `docker compose events --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub time: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub action: String,
    /// The container.
    pub id: String,
    pub service: String,
    #[serde(default)]
    pub attributes: std::collections::BTreeMap<String, String>,
}

/// Where a project's events go: beside the projects, not inside one, so the events of `down`
/// outlive the project's own directory.
pub fn events_path(root: &Path, project: &str) -> PathBuf {
    root.join("events").join(format!("{project}.jsonl"))
}

/// Most bytes an event file holds before it starts again (the previous one is kept as `.1`).
const EVENTS_MAX: u64 = 1 << 20;

/// Appends an event to the project's stream. Best effort: an event that cannot be written is
/// not worth failing the step it reports.
pub fn append_event(
    root: &Path,
    project: &str,
    action: &str,
    container: &str,
    service: &str,
    attributes: &[(&str, String)],
) {
    use std::io::Write;
    let path = events_path(root, project);
    if let Some(dir) = path.parent() {
        let _ = fs::create_dir_all(dir);
    }
    if fs::metadata(&path).is_ok_and(|m| m.len() > EVENTS_MAX) {
        let _ = fs::rename(&path, path.with_extension("jsonl.1"));
    }
    let e = EventRecord {
        time: crate::sys::timestamp(std::time::SystemTime::now()),
        kind: "container".into(),
        action: action.into(),
        id: container.into(),
        service: service.into(),
        attributes: attributes
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    };
    let Ok(mut line) = serde_json::to_vec(&e) else {
        return;
    };
    line.push(b'\n');
    // One write of one line with O_APPEND: lines of concurrent writers do not interleave.
    if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(&path) {
        let _ = f.write_all(&line);
    }
}
