//! An idle supervisor: what it hands over to itself, and how it waits in berth-idle.
//!
//! A supervisor waits far more than it works, and waiting in berth costs the host its resident
//! code and heap (2.3–2.8 MiB PSS with bench/updown.sh, the whole memory budget of ten
//! containers). So after a quiet spell it writes what only it knows (the target it converges
//! to, each container's restart count, backoff and health schedule) into a memfd, and
//! executes berth-idle (init/idle.rs, a 9 KB static program) in its own process: the same pid,
//! children, project lock and sockets. berth-idle waits on one pidfd per running container, a
//! timerfd for the next restart or health check, the published ports' and DNS sockets, the
//! signals `down` sends, and an inotify descriptor on the project's files; the first that is
//! ready makes it execute berth again (`__supervise --resume-fd N`), which reads the memfd
//! back and carries on from there, as a supervisor started again would, without repeating
//! what it had already done.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::{Read, Seek, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::health::Status as Health;
use crate::spec::model::Project;

/// berth-idle (init/idle.rs, built by build.rs).
static BERTH_IDLE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/berth-idle"));

#[derive(Debug, thiserror::Error)]
pub enum IdleError {
    #[error("{step}: {source}")]
    Io {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the handed-over state does not read back: {0}")]
    Handoff(#[from] serde_json::Error),
    #[error(transparent)]
    Memfd(#[from] crate::sys::SysError),
    #[error("berth-idle waits on at most {IDLE_MAX_FDS} descriptors of a kind, not {0}")]
    TooMany(usize),
}

fn io(step: &'static str) -> impl FnOnce(std::io::Error) -> IdleError {
    move |source| IdleError::Io { step, source }
}

/// A health check's schedule and counters, across an idle spell.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthState {
    pub status: Health,
    pub failing_streak: u32,
    /// When its watch began (start_period counts from there), CLOCK_MONOTONIC ns.
    pub started: u64,
    /// When the next probe runs, CLOCK_MONOTONIC ns.
    pub due: u64,
}

/// What the supervisor knows about one container beyond its files.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WatchState {
    /// The run (its init's pid) watched.
    pub pid: Option<i32>,
    /// The end of that run has been handled (the policy decided).
    pub done: bool,
    pub attempts: u32,
    /// When the current run of failures began, CLOCK_MONOTONIC ns.
    pub started: Option<u64>,
    /// When a restart waiting out its backoff is due, CLOCK_MONOTONIC ns.
    pub restart_due: Option<u64>,
    pub health: Option<HealthState>,
}

/// Everything a supervisor hands over to the berth that berth-idle executes again.
#[derive(Debug, Serialize, Deserialize)]
pub struct Handoff {
    /// The last good version of the project (the file may have been broken since).
    pub project: Project,
    pub dir: PathBuf,
    /// The project files' fingerprint when they were last read: a change since is an edit to
    /// apply.
    pub files: String,
    pub watches: BTreeMap<String, WatchState>,
    /// The published ports, in the order of their sockets (`--port-fd`).
    pub ports: Vec<crate::net::ports::Binding>,
    /// The DNS listeners' sockets, by gateway (descriptor numbers kept across the exec).
    pub dns: Vec<(Ipv4Addr, RawFd)>,
}

/// The supervisor's descriptors for an idle spell, besides the lock.
pub struct Sleep {
    pub handoff: Handoff,
    /// Published ports' sockets, in the order of ports.json.
    pub ports: Vec<OwnedFd>,
    /// The DNS listeners' sockets (their numbers are in the handoff).
    pub dns: Vec<OwnedFd>,
    /// One pidfd per running container, and the timer.
    pub wake: Vec<OwnedFd>,
    pub inotify: OwnedFd,
    /// `WD/NAME/...`: the names that matter in each watched directory.
    pub names: String,
}

/// CLOCK_MONOTONIC now, in ns (what `Instant` measures on Linux, but a number that survives
/// an exec).
pub fn mono_now() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: the kernel writes one timespec into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn to_mono(t: Instant) -> u64 {
    let (now, m) = (Instant::now(), mono_now());
    if t >= now {
        m + (t - now).as_nanos() as u64
    } else {
        m.saturating_sub((now - t).as_nanos() as u64)
    }
}

pub fn from_mono(ns: u64) -> Instant {
    let (now, m) = (Instant::now(), mono_now());
    if ns >= m {
        now + std::time::Duration::from_nanos(ns - m)
    } else {
        now.checked_sub(std::time::Duration::from_nanos(m - ns))
            .unwrap_or(now)
    }
}

/// The project files' contents, hashed (a missing file hashes as missing).
pub fn fingerprint(files: &[PathBuf]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for f in files {
        h.update(f.as_os_str().as_encoded_bytes());
        match std::fs::read(f) {
            Ok(b) => {
                h.update([1]);
                h.update((b.len() as u64).to_le_bytes());
                h.update(&b);
            }
            Err(_) => h.update([0]),
        }
    }
    crate::image::Digest::from_hasher(h).hex().to_string()
}

/// An inotify descriptor (not close-on-exec) watching what wakes an idle supervisor: the
/// project files and `.env` (by name, in their directories: editors save by renaming), the
/// events file that every berth process appends to, and the state directory itself (removed:
/// nothing is left to supervise).
pub fn watch(
    files: &[PathBuf],
    events: &Path,
    state_dir: &Path,
) -> Result<(OwnedFd, String), IdleError> {
    // SAFETY: inotify_init1 takes no pointer.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK) };
    if fd < 0 {
        return Err(io("inotify_init1")(std::io::Error::last_os_error()));
    }
    // SAFETY: a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let add = |p: &Path, mask: u32| -> Result<i32, IdleError> {
        let c = CString::new(p.as_os_str().as_encoded_bytes())
            .map_err(|e| io("inotify_add_watch")(std::io::Error::other(e)))?;
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) };
        if wd < 0 {
            return Err(io("inotify_add_watch")(std::io::Error::last_os_error()));
        }
        Ok(wd)
    };
    let changes = libc::IN_MODIFY
        | libc::IN_CLOSE_WRITE
        | libc::IN_CREATE
        | libc::IN_DELETE
        | libc::IN_MOVED_FROM
        | libc::IN_MOVED_TO
        | libc::IN_ATTRIB
        | libc::IN_ONLYDIR;
    let mut names = String::new();
    let mut by_dir: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    for f in files.iter().chain(std::iter::once(&events.to_path_buf())) {
        if let (Some(d), Some(n)) = (f.parent(), f.file_name()) {
            by_dir
                .entry(d.to_path_buf())
                .or_default()
                .push(n.to_string_lossy().into_owned());
        }
    }
    for (d, ns) in by_dir {
        let wd = add(&d, changes)?;
        for n in ns {
            names.push_str(&format!("{wd}/{n}/"));
        }
    }
    // Only the directory's own removal: the supervisor writes its status there.
    add(state_dir, libc::IN_DELETE_SELF | libc::IN_MOVE_SELF)?;
    Ok((fd, names))
}

/// A timerfd (not close-on-exec) that fires at `due` (CLOCK_MONOTONIC ns).
pub fn timer(due: u64) -> Result<OwnedFd, IdleError> {
    // SAFETY: timerfd_create takes no pointer.
    let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, 0) };
    if fd < 0 {
        return Err(io("timerfd_create")(std::io::Error::last_os_error()));
    }
    // SAFETY: a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: (due / 1_000_000_000) as libc::time_t,
            // Never all zeroes, which would disarm it.
            tv_nsec: (due % 1_000_000_000).max(1) as libc::c_long,
        },
    };
    // SAFETY: `spec` is a valid itimerspec; no old value is asked for.
    let r = unsafe {
        libc::timerfd_settime(
            fd.as_raw_fd(),
            libc::TFD_TIMER_ABSTIME,
            &spec,
            std::ptr::null_mut(),
        )
    };
    if r < 0 {
        return Err(io("timerfd_settime")(std::io::Error::last_os_error()));
    }
    Ok(fd)
}

/// Sets or clears close-on-exec on each of `fds`; false if one refused.
fn cloexec(fds: &[RawFd], on: bool) -> bool {
    let flag = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD changes only the descriptor's flags.
    fds.iter()
        .all(|&fd| unsafe { libc::fcntl(fd, libc::F_SETFD, flag) } == 0)
}

/// What berth-idle can wait on (`MAX_FDS` in init/idle.rs), for each of `wake` and `hold`.
const IDLE_MAX_FDS: usize = 2048;

/// The signals that stop a supervisor: SIGHUP, SIGINT, SIGQUIT, SIGTERM. A detached supervisor
/// keeps them blocked in every thread, from its first instruction to its last, and reads them
/// from a signalfd (`stop_signals`): a signal is then either read by the loop that stops, or
/// still pending when the process executes berth-idle, which reads it from its own signalfd
/// and executes berth again, which finds it pending (`stop_pending`). None is ever caught by a
/// handler and lost in an exec.
pub fn stop_set() -> nix::sys::signal::SigSet {
    use nix::sys::signal::Signal::*;
    [SIGHUP, SIGINT, SIGQUIT, SIGTERM].into_iter().collect()
}

/// Blocks the stop signals in this thread (and the threads it starts from now on).
pub fn block_stop_signals() {
    let _ = stop_set().thread_block();
}

/// A non-blocking signalfd for the stop signals (close-on-exec).
pub fn stop_signals() -> Result<nix::sys::signalfd::SignalFd, IdleError> {
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    SignalFd::with_flags(&stop_set(), SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| io("signalfd")(e.into()))
}

/// Whether a stop signal is pending (it came while the process was idle, or while it was
/// executing berth again).
pub fn stop_pending() -> bool {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigpending writes one sigset_t.
    if unsafe { libc::sigpending(set.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: initialised by sigpending above.
    let set = unsafe { set.assume_init() };
    [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT]
        .into_iter()
        // SAFETY: `set` is an initialised sigset_t.
        .any(|sig| unsafe { libc::sigismember(&set, sig) } == 1)
}

/// Writes the handoff into a memfd (not close-on-exec) and returns it.
fn handoff_memfd(h: &Handoff) -> Result<OwnedFd, IdleError> {
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let fd = memfd_create(c"berth-handoff", MFdFlags::empty())
        .map_err(|e| io("memfd_create")(e.into()))?;
    let mut f = std::fs::File::from(fd);
    serde_json::to_writer(&mut f, h)?;
    f.flush().map_err(io("write the handoff"))?;
    Ok(OwnedFd::from(f))
}

/// Reads the handoff back from descriptor `fd` (inherited), and closes it.
pub fn read_handoff(fd: RawFd) -> Result<Handoff, IdleError> {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io("the handoff descriptor")(std::io::Error::last_os_error()));
    }
    // SAFETY: the descriptor was made for this process by the supervisor it was before its
    // idle spell, and handed to nothing else.
    let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    f.rewind().map_err(io("read the handoff"))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).map_err(io("read the handoff"))?;
    Ok(serde_json::from_slice(&buf)?)
}

/// Executes berth-idle in this process. `args` is the `__supervise` command line that
/// berth-idle executes again when woken (`--resume-fd N` is added). Returns only on failure,
/// having tried to execute berth itself again in its place (which then stays awake).
pub fn sleep(s: Sleep, lock: RawFd, project: &str) -> IdleError {
    match prepare(s, lock, project) {
        Ok(exec) => exec(),
        Err(e) => e,
    }
}

type Exec = Box<dyn FnOnce() -> IdleError>;

fn prepare(s: Sleep, lock: RawFd, project: &str) -> Result<Exec, IdleError> {
    let hold: Vec<RawFd> = s
        .ports
        .iter()
        .chain(&s.dns)
        .map(|f| f.as_raw_fd())
        .collect();
    if hold.len() > IDLE_MAX_FDS || s.wake.len() > IDLE_MAX_FDS {
        return Err(IdleError::TooMany(hold.len().max(s.wake.len())));
    }
    let exe = std::fs::File::open("/proc/self/exe").map_err(io("open /proc/self/exe"))?;
    let exe = OwnedFd::from(exe);
    let idle = crate::sys::sealed_memfd(c"berth-idle", |f| f.write_all(BERTH_IDLE))
        .map_err(IdleError::Memfd)?;
    let handoff = handoff_memfd(&s.handoff)?;
    let mut args: Vec<String> = vec![
        "berth".into(),
        "-p".into(),
        project.into(),
        "__supervise".into(),
        "--lock-fd".into(),
        lock.to_string(),
    ];
    for p in &s.ports {
        args.push("--port-fd".into());
        args.push(p.as_raw_fd().to_string());
    }
    args.push("--resume-fd".into());
    args.push(handoff.as_raw_fd().to_string());
    let list = |v: &[RawFd]| {
        v.iter()
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let wake: Vec<RawFd> = s.wake.iter().map(|f| f.as_raw_fd()).collect();
    let params = format!(
        "exe={} inotify={} wake={} hold={}",
        exe.as_raw_fd(),
        s.inotify.as_raw_fd(),
        list(&wake),
        list(&hold),
    );
    // berth-idle's own: closed when it executes berth again (it marks them close-on-exec).
    let own: Vec<RawFd> = wake
        .iter()
        .copied()
        .chain([exe.as_raw_fd(), s.inotify.as_raw_fd()])
        .collect();
    // Berth's, taken back when it comes back.
    let kept: Vec<RawFd> = hold
        .iter()
        .copied()
        .chain([lock, handoff.as_raw_fd()])
        .collect();
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != "BERTH_IDLE" && k != "BERTH_IDLE_NAMES")
        .filter_map(|(k, v)| {
            let mut kv = k.into_encoded_bytes();
            kv.push(b'=');
            kv.extend(v.into_encoded_bytes());
            CString::new(kv).ok()
        })
        .collect();
    let argv: Vec<CString> = args
        .into_iter()
        .filter_map(|a| CString::new(a).ok())
        .collect();
    let mut fallback_env = env.clone();
    fallback_env.push(c"BERTH_IDLE_FAILED=1".to_owned());
    let bad = |e: std::ffi::NulError| io("environment")(std::io::Error::other(e));
    env.push(CString::new(format!("BERTH_IDLE={params}")).map_err(bad)?);
    env.push(CString::new(format!("BERTH_IDLE_NAMES={}", s.names)).map_err(bad)?);
    Ok(Box::new(move || {
        // Open until the exec, then in berth-idle.
        let _open = (&s, &handoff);
        block_stop_signals();
        // Inherited from here on, and only here: a failure puts close-on-exec back.
        if !cloexec(&own, false) || !cloexec(&kept, false) {
            let e = io("fcntl(F_SETFD)")(std::io::Error::last_os_error());
            cloexec(&own, true);
            cloexec(&kept, true);
            return e;
        }
        let e = execveat(&idle, &argv, &env);
        // berth-idle cannot be executed here (a memfd may not be executable on this host):
        // berth comes back at once instead, and stays awake.
        cloexec(&own, true);
        let _ = execveat(&exe, &argv, &fallback_env);
        cloexec(&kept, true);
        e
    }))
}

fn execveat(fd: &OwnedFd, argv: &[CString], env: &[CString]) -> IdleError {
    let mut a: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    a.push(std::ptr::null());
    let mut e: Vec<*const libc::c_char> = env.iter().map(|c| c.as_ptr()).collect();
    e.push(std::ptr::null());
    // SAFETY: argv and envp are NULL-terminated arrays of C strings that outlive the call; on
    // success the call does not return.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd.as_raw_fd(),
            c"".as_ptr(),
            a.as_ptr(),
            e.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    io("execveat")(std::io::Error::last_os_error())
}
