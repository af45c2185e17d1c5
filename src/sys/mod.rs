//! System helpers every layer uses: one home each, below everything else (they import nothing
//! of berth's), so `state`, the runtime and the CLI do not reach into each other for them.

use std::fs;
use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// A system call that failed: what was asked, of which file, and the kernel's answer.
#[derive(Debug, thiserror::Error)]
#[error("{what}{}: {source}", .path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
pub struct SysError {
    pub what: &'static str,
    pub path: Option<std::path::PathBuf>,
    #[source]
    pub source: io::Error,
}

impl SysError {
    pub fn new(what: &'static str, path: Option<&Path>, source: impl Into<io::Error>) -> SysError {
        SysError {
            what,
            path: path.map(Path::to_path_buf),
            source: source.into(),
        }
    }
}

/// berth-init's log record format (no_std, no allocation): the containers' logs are written
/// with it, and the supervisor's and the events' timestamps come from it too.
#[path = "../../init/record.rs"]
pub(crate) mod record;

/// A process's start time in clock ticks since boot (`/proc/PID/stat` field 22), or None for a
/// process that is gone or a zombie. With the pid it names one process for good: a pid can be
/// reused, a (pid, start time) pair cannot.
pub fn process_starttime(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // rest starts at field 3 (state); starttime is field 22.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// An RFC 3339 UTC timestamp with nanoseconds.
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut buf = [0u8; record::TIME_LEN];
    let n = record::time_into(&mut buf, d.as_secs() as i64, d.subsec_nanos());
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Opens `rel` inside the directory `root` as a process chrooted there would see it: openat2
/// with RESOLVE_IN_ROOT and NO_MAGICLINKS, so `..` and every symlink (the last one too, unless
/// `flags` has O_NOFOLLOW) resolve inside `root` and never reach the host's tree (the class
/// of CVE-2021-30465, CVE-2018-15664). An empty `rel`, or `/`, is `root` itself. Every path
/// berth opens inside a container's or an image's root goes through here: mount targets,
/// `cp`, `COPY`/`WORKDIR` in builds, `watch`'s sync, `export`'s sync of a mounted disk.
pub fn open_in_root(
    root: impl std::os::fd::AsFd,
    rel: impl AsRef<Path>,
    flags: rustix::fs::OFlags,
) -> rustix::io::Result<std::os::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let rel = rel.as_ref();
    let rel = rel.strip_prefix("/").unwrap_or(rel);
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    rustix::fs::openat2(
        root,
        rel,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
}

/// Writes `bytes` to `path` through a temporary file of this writer's own and a rename, so a
/// reader sees the old file or the new one, never a part. The temporary name carries the pid
/// and a sequence number: `berth up` and the supervisor it starts write the same files at the
/// same moment, and a shared name let one rename the other's away.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("{}.{n}.tmp", std::process::id()));
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// A memfd named `name`, filled by `fill`, then sealed against writing, growing and shrinking
/// (and further sealing): an executable that no process can change (CVE-2019-5736).
pub fn sealed_memfd(
    name: &std::ffi::CStr,
    fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<std::os::fd::OwnedFd, SysError> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    use nix::sys::memfd::{MFdFlags, memfd_create};
    use std::fs::File;
    use std::os::fd::OwnedFd;
    let flags = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
    // MFD_EXEC (6.3+) says so explicitly where memfds are not executable by default.
    let fd = memfd_create(name, flags | MFdFlags::from_bits_retain(0x10))
        .or_else(|_| memfd_create(name, flags))
        .map_err(|e| SysError::new("memfd_create", None, e))?;
    let mut f = File::from(fd);
    fill(&mut f).map_err(|e| SysError::new("fill the memfd", None, e))?;
    let fd = OwnedFd::from(f);
    fcntl(
        &fd,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SEAL
                | SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_WRITE,
        ),
    )
    .map_err(|e| SysError::new("seal the memfd", None, e))?;
    Ok(fd)
}

/// Unblocks every signal in this thread. For a child between fork and exec (async-signal-safe):
/// a supervisor blocks its stop signals in every thread (reconcile::idle::stop_set), and a
/// child inherits the mask through exec (std's `Command` leaves it as it is).
pub fn unblock_all_signals() {
    let empty = nix::sys::signal::SigSet::empty();
    // SAFETY: sigprocmask reads one sigset_t and writes nothing (no old set asked for).
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, empty.as_ref(), std::ptr::null_mut()) };
}

/// berth's configuration file: `$BERTH_CONFIG`, else `/etc/berth/config.json` (berth has no
/// daemon, so no `daemon.json`; the keys it reads are named as there).
pub fn config_path() -> std::path::PathBuf {
    std::env::var_os("BERTH_CONFIG")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("/etc/berth/config.json"))
}

/// The configuration file's JSON (null when there is none; a file that is not JSON is said
/// once per read and ignored).
pub fn config() -> serde_json::Value {
    let path = config_path();
    let Ok(bytes) = fs::read(&path) else {
        return serde_json::Value::Null;
    };
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        tracing::warn!("{}: not JSON, ignored: {e}", path.display());
        serde_json::Value::Null
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_has_a_start_time_and_a_timestamp_is_rfc3339() {
        assert!(super::process_starttime(std::process::id() as i32).is_some());
        assert_eq!(super::process_starttime(-1), None);
        let t = super::timestamp(std::time::UNIX_EPOCH + std::time::Duration::new(86_400, 5));
        assert!(t.starts_with("1970-01-02T00:00:00.000000005"), "{t}");
    }

    #[test]
    fn a_symlink_in_a_root_resolves_inside_it() {
        use rustix::fs::OFlags;
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("../../../../../../etc", d.path().join("evil")).unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("etc/mine"), b"inside").unwrap();
        let root = std::fs::File::open(d.path()).unwrap();
        // `evil` leads to the root's own /etc, never the host's.
        assert!(super::open_in_root(&root, "evil/mine", OFlags::RDONLY).is_ok());
        assert!(super::open_in_root(&root, "/evil/passwd", OFlags::RDONLY).is_err());
        assert!(super::open_in_root(&root, "../../etc/passwd", OFlags::RDONLY).is_err());
        // "" and "/" are the root itself.
        for rel in ["", "/"] {
            let fd = super::open_in_root(&root, rel, OFlags::DIRECTORY).unwrap();
            let st = rustix::fs::fstat(&fd).unwrap();
            let want = rustix::fs::fstat(&root).unwrap();
            assert_eq!((st.st_dev, st.st_ino), (want.st_dev, want.st_ino));
        }
    }

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("x.json");
        super::atomic_write(&f, b"one").unwrap();
        super::atomic_write(&f, b"two").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
