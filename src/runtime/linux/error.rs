//! A setup failure as it crosses from the setup process to berth: typed, with the step, the
//! path and the errno kept (not flattened into a string, so callers can match on them).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{step}{}: {}", .path.as_ref().map(|p| format!(" {p}")).unwrap_or_default(), describe(*.errno, .detail))]
pub struct SetupError {
    /// The step that failed, e.g. "mount overlay", "pivot_root", "join cgroup".
    pub step: String,
    pub path: Option<String>,
    /// The errno, 0 when the failure was not a syscall's.
    pub errno: i32,
    pub detail: String,
}

fn describe(errno: i32, detail: &str) -> String {
    if errno == 0 {
        return detail.to_string();
    }
    let e = nix::errno::Errno::from_raw(errno);
    if detail.is_empty() {
        format!("{} ({})", e.desc(), e)
    } else {
        format!("{detail}: {} ({})", e.desc(), e)
    }
}

impl SetupError {
    pub fn sys(step: &str, path: Option<&str>, e: nix::errno::Errno) -> SetupError {
        SetupError {
            step: step.to_string(),
            path: path.map(str::to_string),
            errno: e as i32,
            detail: String::new(),
        }
    }

    pub fn io(step: &str, path: Option<&str>, e: &std::io::Error) -> SetupError {
        SetupError {
            step: step.to_string(),
            path: path.map(str::to_string),
            errno: e.raw_os_error().unwrap_or(0),
            detail: if e.raw_os_error().is_some() {
                String::new()
            } else {
                e.to_string()
            },
        }
    }

    pub fn other(step: &str, detail: impl Into<String>) -> SetupError {
        SetupError {
            step: step.to_string(),
            path: None,
            errno: 0,
            detail: detail.into(),
        }
    }
}
