//! berth's side of starting a container: the sealed copy of berth that setup runs from, the
//! socket protocol with the setup process, and the handle to the running container.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};

use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, socketpair};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

use super::error::SetupError;
use super::setup::{Message, SOCKET_FD};
use super::spec::LaunchSpec;
use crate::sys::SysError;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot make the sealed copy of berth: {0}")]
    Seal(#[source] std::sync::Arc<crate::sys::SysError>),
    #[error("cannot start the setup process: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("talking to the setup process: {0}")]
    Protocol(String),
    #[error("container {name}: {source}")]
    Setup {
        name: String,
        #[source]
        source: SetupError,
    },
}

static SETUP_EXE: OnceLock<std::path::PathBuf> = OnceLock::new();

/// Uses `exe` (a berth binary) instead of this process's own executable for the setup process.
/// For programs that embed berth's library without being berth: its tests.
pub fn set_setup_exe(exe: std::path::PathBuf) {
    let _ = SETUP_EXE.set(exe);
}

/// berth's executable as every process that enters a container (setup, the container's init)
/// runs it: never a writable host file. A container that gets hold of its init's executable
/// (through /proc/<pid>/exe) must not be able to overwrite berth (CVE-2019-5736).
///
/// The first choice is a read-only bind mount of the binary that is never attached anywhere
/// (open_tree + mount_setattr): the same inode and page cache as the file, so it costs no
/// memory, and nothing to clean up (it lives as long as a process runs from it). Kernels
/// without the new mount API (before 5.12) get a sealed memfd copy, which costs the size of
/// the binary in RAM per berth process that starts containers.
fn sealed_self() -> Result<&'static OwnedFd, LaunchError> {
    static SEALED: OnceLock<Result<OwnedFd, Arc<SysError>>> = OnceLock::new();
    let source = SETUP_EXE
        .get()
        .cloned()
        .unwrap_or_else(|| std::path::PathBuf::from("/proc/self/exe"));
    SEALED
        .get_or_init(|| {
            let fd = readonly_mount(&source)
                .or_else(|_| memfd_copy(&source))
                .map_err(Arc::new)?;
            // Keep it away from the low descriptors: the setup process gets its socket at
            // fd 3, which must not be where the executable is found.
            use nix::fcntl::{FcntlArg, fcntl};
            let high = fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(64))
                .map_err(|e| Arc::new(SysError::new("dup", None, e)))?;
            // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
            Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(high) })
        })
        .as_ref()
        .map_err(|e| LaunchError::Seal(e.clone()))
}

use super::mounts::{MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY, MountAttr, set_attr};

/// A detached, read-only bind mount of `source` (a file), as an O_PATH descriptor.
fn readonly_mount(source: &std::path::Path) -> Result<OwnedFd, SysError> {
    use rustix::mount::{OpenTreeFlags, open_tree};
    let fd = open_tree(
        rustix::fs::CWD,
        source,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(|e| SysError::new("open_tree", Some(source), e))?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    set_attr(&fd, &attr, false).map_err(|e| SysError::new("mount_setattr", Some(source), e))?;
    Ok(fd)
}

/// A sealed memfd copy of `source`.
fn memfd_copy(source: &std::path::Path) -> Result<OwnedFd, SysError> {
    let mut src = File::open(source).map_err(|e| SysError::new("open", Some(source), e))?;
    crate::sys::sealed_memfd(c"berth", |dst| std::io::copy(&mut src, dst).map(|_| ()))
}

/// The socket pair berth talks to a setup or exec helper over (one message per packet).
fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd), LaunchError> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| LaunchError::Spawn(e.into()))
}

/// A running container: its PID 1, a child of this process.
#[derive(Debug)]
pub struct Running {
    pub name: String,
    /// The host PID of the container's init.
    pub pid: i32,
}

impl Running {
    /// Waits for the container to exit; returns the service's exit status.
    pub fn wait(&self) -> Result<i32, LaunchError> {
        loop {
            match waitpid(Pid::from_raw(self.pid), None) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, s, _)) => return Ok(128 + s as i32),
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(LaunchError::Protocol(format!("waitpid {}: {e}", self.pid))),
            }
        }
    }

    /// Stops the container: `signal` (the service's stop signal) through init, then SIGKILL of
    /// init after `grace` (which ends every process of the PID namespace). Returns the exit status.
    pub fn stop(
        &self,
        signal: nix::sys::signal::Signal,
        grace: std::time::Duration,
    ) -> Result<i32, LaunchError> {
        use nix::sys::wait::WaitPidFlag;
        let pid = Pid::from_raw(self.pid);
        let _ = nix::sys::signal::kill(pid, signal);
        let deadline = std::time::Instant::now() + grace;
        loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, s, _)) => return Ok(128 + s as i32),
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(LaunchError::Protocol(format!("waitpid {}: {e}", self.pid))),
            }
            if std::time::Instant::now() >= deadline {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                return self.wait();
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Sends a signal to the container's init (which forwards it to the service).
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> Result<(), LaunchError> {
        nix::sys::signal::kill(Pid::from_raw(self.pid), sig)
            .map_err(|e| LaunchError::Protocol(format!("kill {}: {e}", self.pid)))
    }
}

/// The zygote: a single-threaded copy of berth, started once (from the sealed copy) before
/// any container, that forks a setup process per container on request. Forking it costs a
/// fraction of executing berth again for every container.
struct Zygote {
    sock: OwnedFd,
    pid: i32,
}

static ZYGOTE: std::sync::Mutex<Option<Zygote>> = std::sync::Mutex::new(None);

/// Ends this process's zygote, if it has one, and reaps it: before the process executes
/// something else (an idle supervisor), which would leave it a zombie nobody reaps.
pub fn stop_zygote() {
    let z = ZYGOTE.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(z) = z {
        // Its end of the socket reads end-of-file, and it exits at once.
        drop(z.sock);
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(z.pid), None);
    }
}

fn spawn_helper(
    exe: &OwnedFd,
    args: &[&str],
    name: &str,
    socket: OwnedFd,
    stdin: Stdio,
    stdout: Stdio,
    stderr: Stdio,
) -> Result<std::process::Child, LaunchError> {
    let theirs_raw = socket.as_raw_fd();
    let mut cmd = Command::new(format!("/proc/self/fd/{}", exe.as_raw_fd()));
    // The setup process becomes the container's init, which lives as long as the container:
    // tell the allocator to commit memory only as it is used and to return it at once.
    cmd.env("MIMALLOC_ARENA_EAGER_COMMIT", "0")
        .env("MIMALLOC_PURGE_DELAY", "0")
        .env("MIMALLOC_ARENA_RESERVE", "256");
    cmd.arg0(name)
        .args(args)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr);
    // SAFETY: only dup2/fcntl/sigprocmask run between fork and exec (async-signal-safe); they
    // place the socket at fd 3 without close-on-exec and unblock every signal.
    unsafe {
        cmd.pre_exec(move || {
            // The setup process, and so the container's service, must not start with the
            // supervisor's stop signals blocked.
            crate::sys::unblock_all_signals();
            // dup2 onto itself would keep close-on-exec set: clear the flag instead.
            let r = if theirs_raw == SOCKET_FD {
                libc::fcntl(SOCKET_FD, libc::F_SETFD, 0)
            } else {
                libc::dup2(theirs_raw, SOCKET_FD)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(LaunchError::Spawn)?;
    drop(socket);
    Ok(child)
}

/// Asks the zygote for a setup process talking on `theirs`, with this output. False when there
/// is no working zygote (the caller then executes the setup process itself).
fn via_zygote(exe: &OwnedFd, tag: &[u8], fds: &[&OwnedFd]) -> bool {
    use nix::sys::socket::{ControlMessage, sendmsg};
    let mut guard = ZYGOTE.lock().unwrap_or_else(|e| e.into_inner());
    for attempt in 0..2 {
        if guard.is_none() {
            if std::env::var_os("BERTH_NO_ZYGOTE").is_some() {
                return false;
            }
            let Ok((ours, zt)) = seqpacket_pair() else {
                return false;
            };
            match spawn_helper(
                exe,
                &[super::ZYGOTE_ARG],
                "berth-zygote",
                zt,
                Stdio::null(),
                Stdio::null(),
                // Its timing traces (BERTH_TRACE_SETUP) go where berth's own stderr goes.
                if std::env::var_os("BERTH_TRACE_SETUP").is_some() {
                    Stdio::inherit()
                } else {
                    Stdio::null()
                },
            ) {
                // The zygote is reaped by nobody until berth exits; it lives as long as berth.
                Ok(child) => {
                    let pid = child.id() as i32;
                    std::mem::forget(child);
                    *guard = Some(Zygote { sock: ours, pid });
                }
                Err(_) => return false,
            }
        }
        let Some(z) = guard.as_ref() else {
            return false;
        };
        let fds: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let iov = [std::io::IoSlice::new(tag)];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        if sendmsg::<()>(z.sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None).is_ok() {
            return true;
        }
        // The zygote died: start another one, once.
        *guard = None;
        if attempt == 1 {
            return false;
        }
    }
    false
}

/// Starts a container: has its init cloned (by the zygote, or by a setup process executed
/// from the sealed copy of berth) as a child of this process, hands it the spec, and waits
/// until the service process has executed its command (or setup failed, with the step).
///
/// `stdout`/`stderr` (None: /dev/null) receive what the service prints when the spec has no
/// log.
pub fn launch(
    spec: &LaunchSpec,
    stdout: Option<File>,
    stderr: Option<File>,
) -> Result<Running, LaunchError> {
    let exe = sealed_self()?;
    let (ours, theirs) = seqpacket_pair()?;
    let null = || {
        File::options()
            .write(true)
            .open("/dev/null")
            .map_err(LaunchError::Spawn)
    };
    let out: OwnedFd = stdout.map_or_else(null, Ok)?.into();
    let err: OwnedFd = stderr.map_or_else(null, Ok)?.into();
    let mut child = None;
    // Serialised before the request and sent right after it: the spec waits in the socket
    // while the zygote clones the init, instead of the init waiting for it.
    let bytes = serde_json::to_vec(spec).map_err(|e| LaunchError::Protocol(e.to_string()))?;
    // The init's namespaces are made by the clone that makes it (see setup::init_namespaces).
    let ns = u64::from(super::setup::init_namespaces(spec).bits() as u32);
    let mut request = vec![b'L'];
    request.extend_from_slice(&ns.to_le_bytes());
    if !via_zygote(exe, &request, &[&theirs, &out, &err]) {
        child = Some(spawn_helper(
            exe,
            &[super::SETUP_ARG, &ns.to_string()],
            "berth-setup",
            theirs,
            Stdio::null(),
            Stdio::from(out),
            Stdio::from(err),
        )?);
    } else {
        drop(theirs);
        drop(out);
        drop(err);
    }
    nix::sys::socket::send(ours.as_raw_fd(), &bytes, MsgFlags::empty())
        .map_err(|e| LaunchError::Protocol(format!("send spec: {e}")))?;
    let status = match child.as_mut() {
        Some(c) => c.wait().map_err(LaunchError::Spawn)?.to_string(),
        None => "cloned by the zygote".to_string(),
    };

    // Messages until end-of-file, which comes when every holder of the other end is done
    // with it: the zygote or setup process (after `Pid`), the init (after `Ready`), and the
    // service process (at its exec, the socket being close-on-exec).
    let mut pid = None;
    let mut failed = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match nix::sys::socket::recv(ours.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(0) => break,
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(LaunchError::Protocol(format!("recv: {e}"))),
        };
        let msg: Message =
            serde_json::from_slice(&buf[..n]).map_err(|e| LaunchError::Protocol(e.to_string()))?;
        match msg {
            Message::Pid(p) => pid = Some(p),
            Message::Ready | Message::Terminal | Message::Exited(_) => {}
            // The first failure is the cause; keep reading to learn the pid to reap.
            Message::Failed(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failed {
        if let Some(p) = pid {
            // The init exits when its setup fails: reap it so it does not linger as a zombie.
            let _ = waitpid(Pid::from_raw(p), None);
        }
        return Err(LaunchError::Setup {
            name: spec.name.clone(),
            source: e,
        });
    }
    match pid {
        Some(pid) => Ok(Running {
            name: spec.name.clone(),
            pid,
        }),
        None => Err(LaunchError::Protocol(format!(
            "setup exited ({status}) without starting the container"
        ))),
    }
}

/// A process started in a running container by [`exec`].
#[derive(Debug)]
pub struct Exec {
    /// Its host pid (to signal it).
    pub pid: i32,
    /// The master of its terminal, when it has one.
    pub terminal: Option<OwnedFd>,
    sock: OwnedFd,
    /// The helper, when it was executed rather than forked by the zygote (to reap it).
    helper: Option<std::process::Child>,
}

/// Receives one message and the descriptor that may travel with it.
fn recv_message(sock: &OwnedFd) -> Result<Option<(Message, Option<OwnedFd>)>, LaunchError> {
    use nix::sys::socket::{ControlMessageOwned, recvmsg};
    use std::os::fd::FromRawFd;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let (n, fd) = match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => {
                let mut fd = None;
                if let Ok(c) = m.cmsgs() {
                    for cm in c {
                        if let ControlMessageOwned::ScmRights(v) = cm {
                            for raw in v {
                                // SAFETY: SCM_RIGHTS gave this process a new descriptor.
                                fd = Some(unsafe { OwnedFd::from_raw_fd(raw) });
                            }
                        }
                    }
                }
                (m.bytes, fd)
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(LaunchError::Protocol(format!("recv: {e}"))),
        };
        if n == 0 {
            return Ok(None);
        }
        let msg: Message =
            serde_json::from_slice(&buf[..n]).map_err(|e| LaunchError::Protocol(e.to_string()))?;
        return Ok(Some((msg, fd)));
    }
}

/// Starts a process inside a running container (`berth exec`, health probes) with these
/// descriptors as its stdin, stdout and stderr (unused when it gets a terminal). Returns once
/// it has executed its command, or with the step that failed.
pub fn exec(
    spec: &super::spec::ExecSpec,
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
) -> Result<Exec, LaunchError> {
    let exe = sealed_self()?;
    let (ours, theirs) = seqpacket_pair()?;
    let mut helper = None;
    if !via_zygote(exe, b"E", &[&theirs, &stdin, &stdout, &stderr]) {
        helper = Some(spawn_helper(
            exe,
            &[super::EXEC_ARG],
            "berth-exec",
            theirs,
            Stdio::from(stdin),
            Stdio::from(stdout),
            Stdio::from(stderr),
        )?);
    } else {
        drop((theirs, stdin, stdout, stderr));
    }
    let bytes = serde_json::to_vec(spec).map_err(|e| LaunchError::Protocol(e.to_string()))?;
    nix::sys::socket::send(ours.as_raw_fd(), &bytes, MsgFlags::empty())
        .map_err(|e| LaunchError::Protocol(format!("send exec spec: {e}")))?;
    let mut ex = Exec {
        pid: 0,
        terminal: None,
        sock: ours,
        helper,
    };
    loop {
        match recv_message(&ex.sock)? {
            None => {
                ex.reap();
                return Err(LaunchError::Protocol(
                    "the exec helper ended without starting the process".into(),
                ));
            }
            Some((Message::Pid(p), _)) => ex.pid = p,
            Some((Message::Terminal, fd)) => ex.terminal = fd,
            Some((Message::Ready, _)) => return Ok(ex),
            Some((Message::Failed(e), _)) => {
                ex.reap();
                return Err(LaunchError::Setup {
                    name: spec.name.clone(),
                    source: e,
                });
            }
            Some((Message::Exited(_), _)) => {}
        }
    }
}

impl Exec {
    /// Waits for the process to end; returns its exit status (128 + signal when killed).
    pub fn wait(mut self) -> Result<i32, LaunchError> {
        let r = loop {
            match recv_message(&self.sock) {
                Ok(Some((Message::Exited(code), _))) => break Ok(code),
                Ok(Some(_)) => continue,
                Ok(None) => {
                    break Err(LaunchError::Protocol(
                        "the exec helper ended without a status".into(),
                    ));
                }
                Err(e) => break Err(e),
            }
        };
        self.reap();
        r
    }

    /// The socket's descriptor, readable when the status (or end-of-file) has arrived: for a
    /// caller that polls it beside other descriptors.
    pub fn status_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.sock.as_fd()
    }

    fn reap(&mut self) {
        if let Some(mut c) = self.helper.take() {
            let _ = c.wait();
        }
    }
}

impl crate::runtime::Started for Exec {
    fn pid(&self) -> i32 {
        self.pid
    }

    fn take_terminal(&mut self) -> Option<OwnedFd> {
        self.terminal.take()
    }

    fn status_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        Exec::status_fd(self)
    }

    fn wait(self) -> Result<i32, crate::runtime::RuntimeError> {
        Exec::wait(self).map_err(|e| crate::runtime::RuntimeError::Step {
            container: String::new(),
            step: "exec",
            cause: crate::runtime::Cause::new(e),
        })
    }
}
