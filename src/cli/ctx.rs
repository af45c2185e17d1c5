//! What every command starts from: the state root and the runtime on it, and how sizes are
//! shown. Its own file, so the commands' files import it and not each other.

use std::path::{Path, PathBuf};

use crate::runtime::linux::runtime::LinuxRuntime;

/// The runtime the commands drive: named here, where it is built, and used by the rest of the
/// CLI through the seam's traits (`runtime::Runtime`, `runtime::Inspect`).
pub type Engine = LinuxRuntime;

/// berth's state root: `BERTH_ROOT`, else /var/lib/berth.
pub fn state_root() -> PathBuf {
    crate::state::default_root()
}

/// The runtime on the state root: the one place the CLI builds it. A kernel below berth's
/// floor is said in its own sentence, not as a failure to open the state.
pub fn open_runtime(root: &Path) -> anyhow::Result<Engine> {
    LinuxRuntime::new(root).map_err(|e| match e {
        crate::runtime::RuntimeError::Kernel(why) => anyhow::anyhow!(why),
        e => anyhow::Error::new(e).context(format!("opening berth's state in {}", root.display())),
    })
}

/// A size as Docker shows it (decimal units: 1.2MB).
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2}GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1}MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1}kB", b / 1e3)
    } else {
        format!("{bytes}B")
    }
}
