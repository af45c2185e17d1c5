//! The setup process and the container's init.
//!
//! A single-threaded copy of berth (the zygote, started once from the sealed copy, see
//! `launch`; or, without it, a setup process executed per container as `__berth-setup`)
//! clones the container's PID 1 in a new PID namespace, as a child of berth (CLONE_PARENT).
//! PID 1 reads the `LaunchSpec` from fd 3, joins the container's cgroup, unshares the other
//! namespaces, builds the root filesystem, then stays as the container's init: it forks the
//! service process, forwards signals to it, reaps every zombie, and exits with the service's
//! status.
//!
//! Messages to berth on fd 3 (a SOCK_SEQPACKET socket, one JSON message per packet):
//! `Pid` (from whoever cloned the init), then `Ready` or `Failed` (from PID 1 or the service
//! process).

use std::ffi::CString;
use std::io::Write as _;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid, fork};
use serde::{Deserialize, Serialize};

use super::error::SetupError;
use super::spec::LaunchSpec;

/// The fd berth hands the setup process its socket on.
pub const SOCKET_FD: i32 = 3;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// The host PID of the container's PID 1.
    Pid(i32),
    /// The root filesystem is built and the service process has been forked.
    Ready,
    Failed(SetupError),
    /// An exec'd process's terminal: the master travels with this message (SCM_RIGHTS).
    Terminal,
    /// An exec'd process ended with this status (exit code, or 128 + signal).
    Exited(i32),
}

fn send(sock: &OwnedFd, m: &Message) {
    if let Ok(bytes) = serde_json::to_vec(m) {
        // A failed send means berth is gone; there is nobody left to tell.
        let _ = nix::sys::socket::send(
            sock.as_raw_fd(),
            &bytes,
            nix::sys::socket::MsgFlags::empty(),
        );
    }
}

fn read_spec<T: serde::de::DeserializeOwned>(sock: &OwnedFd) -> Result<T, SetupError> {
    use nix::sys::socket::MsgFlags;
    // Peek at the packet's size first: a buffer of exactly that size, not a megabyte that the
    // container's init would then carry for its whole life.
    let mut probe = [0u8; 1];
    let size = nix::sys::socket::recv(
        sock.as_raw_fd(),
        &mut probe,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC,
    )
    .map_err(|e| SetupError::sys("read launch spec", None, e))?;
    let mut buf = vec![0u8; size.max(1)];
    let n = nix::sys::socket::recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty())
        .map_err(|e| SetupError::sys("read launch spec", None, e))?;
    serde_json::from_slice(&buf[..n])
        .map_err(|e| SetupError::other("read launch spec", e.to_string()))
}

/// With `BERTH_TRACE_SETUP` set, prints the monotonic clock at each setup stage to stderr
/// (the container's log): where the time of a start goes, without a profiler.
pub(super) fn trace(stage: &str) {
    if std::env::var_os("BERTH_TRACE_SETUP").is_some()
        && let Ok(t) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
    {
        eprintln!(
            "trace {stage} {:.3}",
            t.tv_sec() as f64 * 1e3 + t.tv_nsec() as f64 / 1e6
        );
    }
}

/// `berth __berth-setup` (when there is no zygote): clones the container's init and exits.
pub fn main() -> i32 {
    trace("setup-main");
    // Descriptors inherited from whoever started berth (a shell, a CI runner, a jobserver)
    // must not reach the container (CVE-2024-21626): keep only stdio and the socket.
    close_from(SOCKET_FD + 1, None);
    // SAFETY: berth passes the socket as fd 3 and nothing else in this fresh process owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(SOCKET_FD) };
    // The namespaces to clone the init into: berth's second argument.
    let ns = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let r = clone_init(ns);
    if matches!(r, Ok(None)) {
        std::process::exit(init_main(sock));
    }
    let ok = r.is_ok();
    report_clone(&sock, r);
    if ok { 0 } else { 1 }
}

/// Clones the container's PID 1 from this single-threaded process (the zygote, or a setup
/// process): `Some(pid)` in the caller, `None` in the new init. The clone has CLONE_PARENT: the
/// init is born a child of berth, which waits for it, and no intermediate process has to fork
/// it and exit (one fork and one exit less per start than a setup process would cost).
fn clone_init(ns: u64) -> Result<Option<i32>, SetupError> {
    // Only namespace flags come from the request; a PID namespace always.
    let allowed = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNET;
    let ns = CloneFlags::from_bits_truncate(ns as i32) & allowed;
    let flags = libc::CLONE_PARENT | libc::CLONE_NEWPID | ns.bits() | libc::SIGCHLD;
    // SAFETY: a fork-like clone (no CLONE_VM, no new stack: the child runs on a copy of this
    // stack and returns 0 here). The caller is single-threaded, so no lock is held by another
    // thread in the child. glibc's fork handlers do not run, which only matters for state a
    // second thread could have left behind; glibc's raise() asks the kernel for the thread id
    // rather than trusting its cached one, so a panic's abort still signals the right task.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    match r {
        0 => Ok(None),
        pid if pid > 0 => Ok(Some(pid as i32)),
        _ => Err(SetupError::sys(
            "clone container init",
            None,
            nix::errno::Errno::last(),
        )),
    }
}

/// Tells berth the init's host pid (or why there is none) on the container's socket.
fn report_clone(sock: &OwnedFd, r: Result<Option<i32>, SetupError>) {
    match r {
        Ok(Some(pid)) => send(sock, &Message::Pid(pid)),
        Ok(None) => {}
        Err(e) => send(sock, &Message::Failed(e)),
    }
}

/// The container's PID 1, just cloned: reads the spec, joins the cgroup and the namespaces,
/// builds the root and starts the service (`pid1`).
fn init_main(sock: OwnedFd) -> i32 {
    // Close-on-exec, so that no descriptor of berth's reaches the service (CVE-2024-21626).
    let _ = nix::fcntl::fcntl(
        &sock,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    // The zygote ignores SIGCHLD (it lets the kernel reap its exec helpers); init must not.
    // SAFETY: restoring the default disposition installs no handler code.
    let _ =
        unsafe { nix::sys::signal::signal(Signal::SIGCHLD, nix::sys::signal::SigHandler::SigDfl) };
    trace("init-main");
    let r = read_spec(&sock).and_then(|s: LaunchSpec| {
        trace("spec-read");
        enter(&s)?;
        let procs = open_cgroup_procs(&s.cgroups)?;
        Ok((s, procs))
    });
    let (spec, procs) = match r {
        Ok(v) => v,
        Err(e) => {
            send(&sock, &Message::Failed(e));
            return 1;
        }
    };
    trace("entered");
    pid1(spec, sock, procs)
}

/// `berth __berth-zygote`: waits for requests on fd 3 and forks a setup process for each. A
/// request is one byte with three descriptors: the container's socket, its stdout, its stderr.
pub fn zygote() -> i32 {
    use nix::sys::socket::{ControlMessageOwned, recvmsg};
    close_from(SOCKET_FD + 1, None);
    // SAFETY: berth passes the zygote's socket as fd 3; nothing else here owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(SOCKET_FD) };
    // Once, so that every init it clones executes the same sealed pages of berth-init.
    let _ = berth_init_exe();
    // No parent-death signal: it would fire when the berth *thread* that started the zygote
    // ends. The zygote ends when berth's end of the socket closes (end-of-file below).
    // Setup processes exit as soon as they have forked a container's init: let the kernel
    // reap them (each child sets SIGCHLD back to default first thing).
    // SAFETY: setting a signal disposition to SIG_IGN installs no handler code.
    let _ =
        unsafe { nix::sys::signal::signal(Signal::SIGCHLD, nix::sys::signal::SigHandler::SigIgn) };
    loop {
        // A tag byte, and for `L` the init's namespace flags (8 bytes, little-endian).
        let mut req = [0u8; 9];
        let mut iov = [std::io::IoSliceMut::new(&mut req)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 3]);
        let fds: Vec<OwnedFd> = match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) if msg.bytes == 0 => return 0,
            Ok(msg) => msg
                .cmsgs()
                .map(|c| {
                    c.filter_map(|m| match m {
                        // SAFETY: SCM_RIGHTS gave this process new descriptors it now owns.
                        ControlMessageOwned::ScmRights(v) => {
                            Some(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }))
                        }
                        _ => None,
                    })
                    .flatten()
                    .collect()
                })
                .unwrap_or_default(),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 1,
        };
        // `L`: a container's setup (socket, stdout, stderr); `E`: an exec (socket, stdin,
        // stdout, stderr).
        let exec = req[0] == b'E';
        if fds.len() != if exec { 4 } else { 3 } {
            continue;
        }
        if !exec {
            // The container's init, cloned straight from here (a child of berth's), into the
            // namespaces the request names after its tag.
            let ns = u64::from_le_bytes(req[1..9].try_into().unwrap_or_default());
            trace("zygote-req");
            let r = clone_init(ns);
            if matches!(r, Ok(None)) {
                trace("cloned");
                // The request's socket at fd 3 (replacing the zygote's), its output on 1 and
                // 2. The received descriptors are all above 3 (0-3 were taken), so no dup2
                // overwrites one that a later dup2 still reads.
                for (i, target) in [(1, 1), (2, 2), (0, SOCKET_FD)] {
                    // SAFETY: dup2 of descriptors this process owns onto fixed numbers.
                    if unsafe { libc::dup2(fds[i].as_raw_fd(), target) } < 0 {
                        std::process::exit(1);
                    }
                }
                if let Ok(null) = std::fs::File::open("/dev/null") {
                    // SAFETY: as above.
                    unsafe { libc::dup2(null.as_raw_fd(), 0) };
                }
                // The zygote's socket was fd 3 and is now the request's: forget the old owner.
                std::mem::forget(sock);
                drop(fds);
                // Everything else goes but the sealed berth-init, which this init executes.
                close_from(SOCKET_FD + 1, berth_init_exe().map(|f| f.as_raw_fd()));
                // SAFETY: fd 3 is the request's socket, placed just above; nothing else owns it.
                let req = unsafe { OwnedFd::from_raw_fd(SOCKET_FD) };
                std::process::exit(init_main(req));
            }
            report_clone(&fds[0], r);
            drop(fds);
            continue;
        }
        // SAFETY: the zygote is single-threaded, so the child may run any code after fork.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                // SAFETY: restoring the default disposition installs no handler code.
                let _ = unsafe {
                    nix::sys::signal::signal(Signal::SIGCHLD, nix::sys::signal::SigHandler::SigDfl)
                };
                // The request's socket at fd 3 (replacing the zygote's), its stdio on 0-2. The
                // received descriptors are all above 3 (0-3 were taken), so no dup2 below
                // overwrites one that a later dup2 still reads.
                for (i, target) in [(1, 0), (2, 1), (3, 2), (0, SOCKET_FD)] {
                    // SAFETY: dup2 of descriptors this process owns onto fixed numbers.
                    if unsafe { libc::dup2(fds[i].as_raw_fd(), target) } < 0 {
                        std::process::exit(1);
                    }
                }
                // The zygote's socket was fd 3 and is now the request's: forget the old owner.
                std::mem::forget(sock);
                drop(fds);
                std::process::exit(exec_main());
            }
            Ok(ForkResult::Parent { .. }) => drop(fds),
            Err(_) => drop(fds),
        }
    }
}

/// `berth __berth-exec` (or an `E` request to the zygote): starts a process inside a running
/// container. Joins the container's cgroup and namespaces (through a pidfd of its init, so a
/// recycled pid cannot redirect it), forks (a new PID namespace applies to children only), and
/// the child gets the service's credentials and security setup before it execs. This process
/// stays outside the container's PID namespace, waits for the child and reports its status.
///
/// Messages: `Pid` (host pid of the process), `Terminal` with the pty master when the process
/// has a terminal, then `Ready` (exec succeeded) or `Failed`, then `Exited`.
pub fn exec_main() -> i32 {
    close_from(SOCKET_FD + 1, None);
    // SAFETY: the socket is fd 3 (placed there by berth or the zygote); nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(SOCKET_FD) };
    let _ = nix::fcntl::fcntl(
        &sock,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    // Non-dumpable before it enters: the container cannot reach this process's memory or its
    // executable (the sealed copy of berth) through /proc (CVE-2019-5736).
    let _ = nix::sys::prctl::set_dumpable(false);
    let _ = nix::sys::prctl::set_name(c"berth-exec");
    match exec_run(&sock) {
        Ok(code) => {
            send(&sock, &Message::Exited(code));
            0
        }
        Err(e) => {
            send(&sock, &Message::Failed(e));
            1
        }
    }
}

fn exec_run(sock: &OwnedFd) -> Result<i32, SetupError> {
    let spec: super::spec::ExecSpec = read_spec(sock)?;
    let raw = rustix::process::Pid::from_raw(spec.pid)
        .ok_or_else(|| SetupError::other("find container", "no init pid"))?;
    let pidfd =
        rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()).map_err(|e| {
            SetupError {
                step: "find container".into(),
                path: None,
                errno: e.raw_os_error(),
                detail: format!("the init (pid {}) is gone", spec.pid),
            }
        })?;
    // The pid may have been recycled before the pidfd was opened: the start time tells.
    if super::runtime::starttime(spec.pid) != Some(spec.starttime) {
        return Err(SetupError::other(
            "find container",
            format!("{} is not running", spec.name),
        ));
    }
    join_cgroups(&spec.cgroups)?;
    // Entering the mount namespace also moves this process's root and working directory to
    // the container's root: from here on every path resolves inside the container.
    nix::sched::setns(&pidfd, namespaces(spec.own_network))
        .map_err(|e| SetupError::sys("enter the container's namespaces", None, e))?;
    drop(pidfd);

    let args: Vec<CString> = spec
        .process
        .args
        .iter()
        .map(|a| cstr(a, "command"))
        .collect::<Result<_, _>>()?;
    if args.is_empty() {
        return Err(SetupError::other("exec", "no command given"));
    }
    let env: Vec<CString> = spec
        .process
        .env
        .iter()
        .map(|a| cstr(a, "environment"))
        .collect::<Result<_, _>>()?;
    // The terminal comes from the container's own devpts (its /dev/ptmx, now our root's).
    let tty = if spec.process.tty {
        Some(open_pty()?)
    } else {
        None
    };
    // The child reports a failure before exec on this pipe; end-of-file with nothing written
    // means the exec happened (the write end is close-on-exec).
    let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| SetupError::sys("create pipe", None, e))?;
    let mask = SigSet::thread_get_mask().unwrap_or_else(|_| SigSet::empty());
    // SAFETY: this process is single-threaded (forked by the zygote or freshly executed).
    let child = match unsafe { fork() }.map_err(|e| SetupError::sys("fork", None, e))? {
        ForkResult::Child => {
            drop(report_r);
            let mut r = Ok(());
            if let Some((_, slave)) = &tty {
                r = nix::unistd::setsid()
                    .map_err(|e| SetupError::sys("setsid", None, e))
                    .and_then(|_| attach_terminal(slave));
            }
            let e = match r {
                Ok(()) => exec_service(&spec.process, &args, &env, &mask, None),
                Err(e) => e,
            };
            if let Ok(bytes) = serde_json::to_vec(&e) {
                let _ = nix::unistd::write(&report_w, &bytes);
            }
            std::process::exit(127);
        }
        ForkResult::Parent { child } => child,
    };
    drop(report_w);
    send(sock, &Message::Pid(child.as_raw()));
    if let Some((master, _)) = tty {
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        let bytes = serde_json::to_vec(&Message::Terminal).unwrap_or_default();
        let iov = [std::io::IoSlice::new(&bytes)];
        let fds = [master.as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let _ = sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None);
        // berth holds the master now; this process must not keep the terminal open.
        drop(master);
    }
    let mut report = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::fs::File::from(report_r), &mut report);
    let failed = serde_json::from_slice::<SetupError>(&report).ok();
    if failed.is_none() {
        send(sock, &Message::Ready);
    }
    let code = loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => break code,
            Ok(WaitStatus::Signaled(_, s, _)) => break 128 + s as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(SetupError::sys("wait", None, e)),
        }
    };
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(code)
}

/// Joins the cgroup and unshares the namespaces.
fn enter(spec: &LaunchSpec) -> Result<(), SetupError> {
    if let Some(ns) = &spec.netns {
        let f = std::fs::File::open(ns).map_err(|e| {
            SetupError::io("open network namespace", Some(&ns.to_string_lossy()), &e)
        })?;
        nix::sched::setns(&f, CloneFlags::CLONE_NEWNET).map_err(|e| {
            SetupError::sys("join network namespace", Some(&ns.to_string_lossy()), e)
        })?;
    }
    Ok(())
}

/// The container cgroup's `cgroup.procs` files (one per hierarchy), opened while the host's
/// paths are reachable; init writes itself into them once the root is built (`join_opened`).
fn open_cgroup_procs(dirs: &[std::path::PathBuf]) -> Result<Vec<std::fs::File>, SetupError> {
    dirs.iter()
        .map(|dir| {
            let f = dir.join("cgroup.procs");
            std::fs::OpenOptions::new()
                .write(true)
                .open(&f)
                .map_err(|e| SetupError::io("join cgroup", Some(&f.to_string_lossy()), &e))
        })
        .collect()
}

/// Moves init into the container's cgroup, then gives it a cgroup namespace rooted there.
///
/// After the root is built, not before: what setup writes (the layer's directories, mount
/// points, the container's files) brings block and page-cache pages that outlive the container,
/// and a page charged to the container's memory cgroup keeps that cgroup alive, dying, after
/// its removal. On this host 440 such cgroups had piled up after a day of tests and made every
/// start twice as slow (7.9 ms became 15 ms; crun's runs slowed as much). Every process of the
/// container's own is still born inside the limits: the service is forked after this.
fn join_opened(procs: Vec<std::fs::File>) -> Result<(), SetupError> {
    use std::io::Write as _;
    for mut f in procs {
        // "0": the writing process itself, whatever its pid is in its own namespace.
        f.write_all(b"0")
            .map_err(|e| SetupError::io("join cgroup", Some("cgroup.procs"), &e))?;
    }
    unshare(CloneFlags::CLONE_NEWCGROUP)
        .map_err(|e| SetupError::sys("unshare the cgroup namespace", None, e))
}

/// The namespaces a container's init is cloned into (all but the cgroup one, which it
/// unshares once in its cgroup). Made at clone time rather than unshared by the init: unsharing
/// them in a process that is already a PID namespace's init made every mount and file
/// creation of its setup several times slower (2.5 ms instead of 0.45 for the root's first
/// mounts, measured with BERTH_TRACE_SETUP).
pub(super) fn init_namespaces(spec: &LaunchSpec) -> CloneFlags {
    let mut flags = namespaces(spec.own_network && spec.netns.is_none());
    flags.remove(CloneFlags::CLONE_NEWCGROUP);
    if spec.host_ipc {
        flags.remove(CloneFlags::CLONE_NEWIPC);
    }
    if spec.host_uts {
        flags.remove(CloneFlags::CLONE_NEWUTS);
    }
    flags
}

/// Moves this process into the cgroup's directories (one per hierarchy).
fn join_cgroups(dirs: &[std::path::PathBuf]) -> Result<(), SetupError> {
    for dir in dirs {
        let f = dir.join("cgroup.procs");
        // "0": the writing process itself, whatever its pid is in its own namespace.
        std::fs::write(&f, "0")
            .map_err(|e| SetupError::io("join cgroup", Some(&f.to_string_lossy()), &e))?;
    }
    Ok(())
}

/// The namespaces a container has of its own (the network one unless it shares the host's).
fn namespaces(own_network: bool) -> CloneFlags {
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWCGROUP;
    if own_network {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    flags
}

/// In a forked child that is a session leader: opens the terminal's slave (which makes it the
/// controlling terminal, no O_NOCTTY) and puts it on stdin, stdout and stderr.
fn attach_terminal(slave: &str) -> Result<(), SetupError> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(slave)
        .map_err(|e| SetupError::io("open terminal", Some(slave), &e))?;
    for target in 0..3 {
        // SAFETY: dup2 of a descriptor we own onto stdio.
        unsafe { libc::dup2(f.as_raw_fd(), target) };
    }
    Ok(())
}

/// The container's PID 1: returns its exit status (the service's).
fn pid1(spec: LaunchSpec, sock: OwnedFd, procs: Vec<std::fs::File>) -> i32 {
    match start(&spec, &sock, procs) {
        Err(e) => {
            send(&sock, &Message::Failed(e));
            1
        }
        Ok((service, mut exit_file, logs, stdin_keep, gate)) => {
            // The init runs under the container's AppArmor profile too: its own processes
            // may signal it, and nothing in the container is left unconfined.
            if let Some(name) = &spec.process.apparmor
                && let Err(e) = super::apparmor::set_exec_profile(name)
            {
                send(
                    &sock,
                    &Message::Failed(SetupError::io("set the AppArmor profile", Some(name), &e)),
                );
                return 1;
            }
            send(&sock, &Message::Ready);
            // Init keeps no descriptor of berth's, and as little memory as it can: it lives as
            // long as the container, once per container (the density target).
            drop(sock);
            drop(spec);
            trace("init-loop");
            // berth-init takes over this process (it releases the service from its gate);
            // only if it cannot be executed does this copy of berth stay as the init.
            let e = exec_berth_init(
                service,
                &exit_file,
                logs.as_ref(),
                stdin_keep.as_ref(),
                &gate,
            );
            log(&format!(
                "cannot execute berth-init ({e}); staying as the init"
            ));
            drop(gate);
            // SAFETY: mi_collect only frees allocator-internal memory; no Rust object is live
            // in freed blocks.
            unsafe { libmimalloc_sys::mi_collect(true) };
            let code = match logs {
                None => init_loop(service),
                Some((w, fds)) => init_loop_logging(service, w, fds),
            };
            trace("service-exited");
            let _ = writeln!(exit_file, "{code}");
            code
        }
    }
}

/// berth-init (init/main.rs, built by build.rs): the container's PID 1 from the end of setup
/// on, a 13 KB static program with no libc or allocator.
static BERTH_INIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/berth-init"));

/// The bytes of berth-init, for tests that check what a container's PID 1 runs.
pub fn init_program() -> &'static [u8] {
    BERTH_INIT
}

/// A sealed memfd holding berth-init, made once per process (the zygote makes it before it
/// clones any init, so that every container executes the same pages). Sealed against writes,
/// so a container that reached its init's executable could not change it (CVE-2019-5736).
pub(super) fn berth_init_exe() -> Option<std::os::fd::BorrowedFd<'static>> {
    use std::sync::OnceLock;
    static FD: OnceLock<Option<OwnedFd>> = OnceLock::new();
    FD.get_or_init(|| {
        use nix::fcntl::{FcntlArg, fcntl};
        let fd =
            crate::sys::sealed_memfd(c"berth-init", |f| std::io::Write::write_all(f, BERTH_INIT))
                .ok()?;
        // Away from the low descriptors that setup places (0-3).
        let high = fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(64)).ok()?;
        // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor nothing else owns.
        Some(unsafe { OwnedFd::from_raw_fd(high) })
    })
    .as_ref()
    .map(|f| f.as_fd())
}

/// Replaces this process (the container's init, its setup done) by berth-init, handing it the
/// service, the exit file, the log and the gate. Returns only on failure.
fn exec_berth_init(
    service: Pid,
    exit_file: &std::fs::File,
    logs: Option<&LogPump>,
    stdin_keep: Option<&OwnedFd>,
    gate: &OwnedFd,
) -> String {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    let Some(exe) = berth_init_exe() else {
        return "no sealed copy".into();
    };
    let keep = |fd: std::os::fd::BorrowedFd<'_>| {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))
            .map(|_| fd.as_raw_fd())
            .map_err(|e| format!("fcntl: {e}"))
    };
    let r = (|| -> Result<String, String> {
        let mut params = format!(
            "BERTH_INIT=svc={} exit={} gate={}",
            service.as_raw(),
            keep(exit_file.as_fd())?,
            keep(gate.as_fd())?
        );
        if let Some(fd) = stdin_keep {
            // Held open, never read: berth-init only has to inherit it.
            keep(fd.as_fd())?;
        }
        if let Some((w, streams)) = logs {
            let (dir, file, size, spec) = w.parts();
            params += &format!(
                " dir={} log={} size={size} max={} files={}",
                keep(dir)?,
                keep(file)?,
                spec.max_size,
                spec.max_files
            );
            for (fd, stream) in streams {
                let name = if *stream == 0 { "out" } else { "err" };
                params += &format!(" {name}={}", keep(fd.as_fd())?);
            }
        }
        Ok(params)
    })();
    let params = match r {
        Ok(p) => p,
        Err(e) => return e,
    };
    let (Ok(params), Ok(arg0)) = (CString::new(params), CString::new("berth-init")) else {
        return "bad parameters".into();
    };
    let e = nix::unistd::execveat(
        exe,
        c"",
        &[arg0],
        &[params],
        nix::fcntl::AtFlags::AT_EMPTY_PATH,
    );
    match e {
        Err(e) => format!("execveat: {e}"),
        Ok(never) => match never {},
    }
}

/// Applies `ulimits`. Raising a hard limit needs CAP_SYS_RESOURCE, which some hosts do not
/// grant even to root: berth raises nothing the file did not ask for, and says so precisely
/// when a value cannot be applied.
fn set_rlimits(limits: &[(String, i64, i64)]) -> Result<(), SetupError> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    for (name, soft, hard) in limits {
        let res = match name.as_str() {
            "nofile" => Resource::RLIMIT_NOFILE,
            "nproc" => Resource::RLIMIT_NPROC,
            "core" => Resource::RLIMIT_CORE,
            "memlock" => Resource::RLIMIT_MEMLOCK,
            "stack" => Resource::RLIMIT_STACK,
            "cpu" => Resource::RLIMIT_CPU,
            "fsize" => Resource::RLIMIT_FSIZE,
            "data" => Resource::RLIMIT_DATA,
            "as" => Resource::RLIMIT_AS,
            "locks" => Resource::RLIMIT_LOCKS,
            "sigpending" => Resource::RLIMIT_SIGPENDING,
            "msgqueue" => Resource::RLIMIT_MSGQUEUE,
            "nice" => Resource::RLIMIT_NICE,
            "rtprio" => Resource::RLIMIT_RTPRIO,
            "rttime" => Resource::RLIMIT_RTTIME,
            other => {
                return Err(SetupError::other(
                    "ulimits",
                    format!("unknown limit `{other}`"),
                ));
            }
        };
        let v = |x: i64| if x < 0 { libc::RLIM_INFINITY } else { x as u64 };
        if let Err(e) = setrlimit(res, v(*soft), v(*hard)) {
            let current = getrlimit(res).map(|(_, h)| h).unwrap_or(0);
            let detail = if e == nix::errno::Errno::EPERM && v(*hard) > current {
                format!(
                    "cannot raise the hard limit of `{name}` to {hard}: the current hard limit is {current} and raising it needs CAP_SYS_RESOURCE, which this host does not give berth"
                )
            } else {
                format!("cannot set `{name}` to {soft}:{hard}")
            };
            return Err(SetupError {
                step: "ulimits".into(),
                path: None,
                errno: e as i32,
                detail,
            });
        }
    }
    Ok(())
}

/// Closes every descriptor from `first` up, but `keep` (the sealed berth-init, in an init).
fn close_from(first: i32, keep: Option<i32>) {
    let close_range = |from: i32, to: libc::c_uint| {
        // SAFETY: close_range only closes descriptors; none in the range is owned by live Rust
        // objects in this fresh process (the caller keeps what it still needs out of it).
        unsafe { libc::syscall(libc::SYS_close_range, from as libc::c_uint, to, 0) == 0 }
    };
    let done = match keep.filter(|k| *k >= first) {
        Some(k) => {
            (k == first || close_range(first, (k - 1) as libc::c_uint))
                && close_range(k + 1, libc::c_uint::MAX)
        }
        None => close_range(first, libc::c_uint::MAX),
    };
    if done {
        return;
    }
    // Kernels before 5.9: close what /proc lists.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for fd in fds
        .into_iter()
        .filter(|fd| *fd >= first && Some(*fd) != keep)
    {
        let _ = nix::unistd::close(fd);
    }
}

fn cstr(s: &str, what: &str) -> Result<CString, SetupError> {
    CString::new(s).map_err(|_| SetupError::other(what, format!("`{s}` contains a NUL byte")))
}

/// Builds the root and forks the service process; returns its pid.
/// What init keeps to write the service's output to the log.
type LogPump = (super::logs::Writer, Vec<(OwnedFd, usize)>);

/// A terminal for the service: the master (kept by init) and the slave's path inside the
/// container (opened by the service, which makes it its controlling terminal).
fn open_pty() -> Result<(OwnedFd, String), SetupError> {
    use nix::fcntl::OFlag;
    let m = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| SetupError::sys("open terminal", Some("/dev/ptmx"), e))?;
    nix::pty::grantpt(&m).map_err(|e| SetupError::sys("grantpt", None, e))?;
    nix::pty::unlockpt(&m).map_err(|e| SetupError::sys("unlockpt", None, e))?;
    let slave = nix::pty::ptsname_r(&m).map_err(|e| SetupError::sys("ptsname", None, e))?;
    let fd = OwnedFd::from(m);
    let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)
        .map_err(|e| SetupError::sys("terminal flags", None, e))?;
    nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(|e| SetupError::sys("terminal flags", None, e))?;
    Ok((fd, slave))
}

/// What `start` hands init: the service, the exit-status file, the log pump, the write end of
/// a `stdin_open` pipe (held, never written), and the write end of the service's gate.
type Started = (
    Pid,
    std::fs::File,
    Option<LogPump>,
    Option<OwnedFd>,
    OwnedFd,
);

fn start(
    spec: &LaunchSpec,
    sock: &OwnedFd,
    procs: Vec<std::fs::File>,
) -> Result<Started, SetupError> {
    // Named for `ps` inside the container, and not dumpable: nothing in the container can open
    // this process's memory or its executable through /proc (CVE-2019-5736).
    let _ = nix::sys::prctl::set_name(c"berth-init");
    nix::sys::prctl::set_dumpable(false)
        .map_err(|e| SetupError::sys("prctl(PR_SET_DUMPABLE)", None, e))?;

    // Where init records the service's exit status for berth: opened before the host's paths
    // disappear behind pivot_root, close-on-exec so the service never holds it.
    std::fs::create_dir_all(&spec.dir).map_err(|e| {
        SetupError::io(
            "create container directory",
            Some(&spec.dir.to_string_lossy()),
            &e,
        )
    })?;
    let exit_path = spec.dir.join("exit");
    let exit_file = std::fs::File::create(&exit_path)
        .map_err(|e| SetupError::io("create exit file", Some(&exit_path.to_string_lossy()), &e))?;
    // The log, like the exit file, is opened while the host's paths are still there.
    let logs = match &spec.log {
        Some(l) => Some((
            super::logs::Writer::open(&spec.dir, *l)?,
            super::logs::pipes()?,
        )),
        None => None,
    };
    trace("pid1");
    super::rootfs::build(spec)?;
    trace("rootfs");
    if spec.own_network && spec.netns.is_none() {
        super::net::loopback_up()?;
    }
    join_opened(procs)?;

    // Block every signal before forking: init collects them with sigwaitinfo (a blocked signal
    // still reaches a namespace's init, an unhandled one would be dropped), and the service
    // must not receive one before it has reset its mask.
    let all = SigSet::all();
    let mut old = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&all), Some(&mut old))
        .map_err(|e| SetupError::sys("block signals", None, e))?;

    let args: Vec<CString> = spec
        .process
        .args
        .iter()
        .map(|a| cstr(a, "service command"))
        .collect::<Result<_, _>>()?;
    if args.is_empty() {
        return Err(SetupError::other(
            "start service",
            "no command to run (the image has none and the file gives none)",
        ));
    }
    let env: Vec<CString> = spec
        .process
        .env
        .iter()
        .map(|a| cstr(a, "service environment"))
        .collect::<Result<_, _>>()?;

    // A terminal is opened in the container's own devpts, after pivot_root.
    let tty = if spec.process.tty && logs.is_some() {
        Some(open_pty()?)
    } else {
        None
    };
    // stdin_open: a pipe whose write end init keeps (and never writes to).
    let stdin_pipe = if spec.process.stdin_open && !spec.process.tty {
        Some(
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| SetupError::sys("create stdin pipe", None, e))?,
        )
    } else {
        None
    };
    // The service waits on this pipe before its exec until init has become berth-init and made
    // itself non-dumpable: nothing of the container runs while its PID 1 could be inspected.
    let (gate_r, gate_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| SetupError::sys("create pipe", None, e))?;
    // SAFETY: still single-threaded; the child only sets up and execs.
    let service = match unsafe { fork() }.map_err(|e| SetupError::sys("fork service", None, e))? {
        ForkResult::Child => {
            drop(gate_w);
            if let Some((_, slave)) = &tty {
                // The service is a session leader (setsid in exec_service): opening the slave
                // without O_NOCTTY makes it the controlling terminal.
                let r = nix::unistd::setsid()
                    .map_err(|e| SetupError::sys("setsid", None, e))
                    .and_then(|_| attach_terminal(slave));
                if let Err(e) = r {
                    send(sock, &Message::Failed(e));
                    std::process::exit(127);
                }
            } else if let Some((_, p)) = &logs {
                // dup2 onto 1 and 2 clears close-on-exec there; the originals close on exec.
                for (fd, target) in [(&p.write[0], 1), (&p.write[1], 2)] {
                    // SAFETY: dup2 of a descriptor we own onto stdout/stderr of this process.
                    if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
                        let e = SetupError::sys(
                            "redirect output to the log",
                            None,
                            nix::errno::Errno::last(),
                        );
                        send(sock, &Message::Failed(e));
                        std::process::exit(127);
                    }
                }
            }
            if let Some((r, _)) = &stdin_pipe {
                // SAFETY: dup2 of a descriptor we own onto stdin.
                unsafe { libc::dup2(r.as_raw_fd(), 0) };
            }
            let e = exec_service(&spec.process, &args, &env, &old, Some(&gate_r));
            send(sock, &Message::Failed(e));
            std::process::exit(127);
        }
        ForkResult::Parent { child } => child,
    };
    drop(gate_r);
    // Init keeps only the read ends: the pipes end when the service and its children do.
    // Init keeps only what it reads: the terminal's master, or the pipes' read ends.
    let logs = logs.map(|(w, p)| match tty {
        Some((master, _)) => (w, vec![(master, 0)]),
        None => {
            let [out, err] = p.read;
            (w, vec![(out, 0), (err, 1)])
        }
    });
    Ok((service, exit_file, logs, stdin_pipe.map(|(_, w)| w), gate_w))
}

/// In the service process: credentials, working directory, then exec. Returns only on failure.
fn exec_service(
    p: &super::spec::Process,
    args: &[CString],
    env: &[CString],
    mask: &SigSet,
    gate: Option<&OwnedFd>,
) -> SetupError {
    let r = (|| -> Result<(), SetupError> {
        // A service on a terminal is already the leader of its own session.
        if nix::unistd::getsid(None).ok() != Some(nix::unistd::getpid()) {
            nix::unistd::setsid().map_err(|e| SetupError::sys("setsid", None, e))?;
        }
        set_rlimits(&p.rlimits)?;
        // Entered at the exec below, with the root's credentials still held.
        if let Some(name) = &p.apparmor {
            super::apparmor::set_exec_profile(name)
                .map_err(|e| SetupError::io("set the AppArmor profile", Some(name), &e))?;
        }
        if let Some(adj) = p.oom_score_adj {
            // Raising it is always allowed; lowering it needs CAP_SYS_RESOURCE in the bounding
            // set of the process that starts berth.
            std::fs::write("/proc/self/oom_score_adj", adj.to_string()).map_err(|e| {
                SetupError::io(
                    "set oom_score_adj (lowering it needs CAP_SYS_RESOURCE)",
                    Some(&adj.to_string()),
                    &e,
                )
            })?;
        }
        trace("svc-rlimits");
        let keep = super::security::effective_set(&p.cap_add, &p.cap_drop, p.privileged)?;
        // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN: do it while we have it
        // (the default profile allows the capset/setuid calls that follow).
        if p.allow_new_privs
            && let Some(f) = &p.seccomp
        {
            super::seccomp::install(f)?;
        }
        // The bounding set shrinks while this process still holds CAP_SETPCAP (before setuid).
        super::security::limit_bounding(&keep)?;
        trace("svc-bounding");
        let groups: Vec<Gid> = p.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        nix::unistd::setgroups(&groups).map_err(|e| SetupError::sys("setgroups", None, e))?;
        let (g, u) = (Gid::from_raw(p.gid), Uid::from_raw(p.uid));
        nix::unistd::setresgid(g, g, g).map_err(|e| SetupError::sys("setgid", None, e))?;
        nix::unistd::setresuid(u, u, u).map_err(|e| SetupError::sys("setuid", None, e))?;
        super::security::set_process_caps(p.uid, &keep)?;
        trace("svc-caps");
        // The working directory is resolved inside the container's root, after pivot_root, never
        // through a host path or an inherited descriptor (CVE-2024-21626).
        let cwd = if p.cwd.is_empty() {
            "/"
        } else {
            p.cwd.as_str()
        };
        nix::unistd::chdir(cwd)
            .map_err(|e| SetupError::sys("chdir to working_dir", Some(cwd), e))?;
        if !p.allow_new_privs {
            nix::sys::prctl::set_no_new_privs()
                .map_err(|e| SetupError::sys("prctl(PR_SET_NO_NEW_PRIVS)", None, e))?;
        }
        sigprocmask(SigmaskHow::SIG_SETMASK, Some(mask), None)
            .map_err(|e| SetupError::sys("restore signal mask", None, e))?;
        // berth turns transparent huge pages off for itself (main.rs); the service gets the
        // host's policy back.
        nix::sys::prctl::set_thp_disable(false)
            .map_err(|e| SetupError::sys("prctl(PR_SET_THP_DISABLE)", None, e))?;
        if let Some(g) = gate {
            // End of file: init is berth-init now (or stays as it is); either way, go on.
            let mut b = [0u8; 1];
            while let Err(nix::errno::Errno::EINTR) = nix::unistd::read(g, &mut b) {}
        }
        trace("svc-pre-seccomp");
        // Last, so the filter constrains the service and nothing of setup.
        if !p.allow_new_privs
            && let Some(f) = &p.seccomp
        {
            super::seccomp::install(f)?;
        }
        Ok(())
    })();
    if let Err(e) = r {
        return e;
    }
    trace("service-exec");
    let prog = &args[0];
    let err = if prog.as_bytes().contains(&b'/') {
        nix::unistd::execve(prog, args, env)
    } else {
        nix::unistd::execvpe(prog, args, env)
    };
    let errno = match err {
        Err(e) => e,
        Ok(never) => match never {},
    };
    SetupError::sys(
        "exec service command",
        Some(&args[0].to_string_lossy()),
        errno,
    )
}

/// Reaps every child, forwards signals to the service, and returns the service's exit status
/// when it exits (exit code, or 128 + signal number, like a shell).
fn init_loop(service: Pid) -> i32 {
    let all = SigSet::all();
    loop {
        let sig = match all.wait() {
            Ok(s) => s,
            Err(_) => continue,
        };
        if sig != Signal::SIGCHLD {
            // Forward: the service decides what the signal means.
            let _ = kill(service, sig);
            continue;
        }
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == service => return code,
                Ok(WaitStatus::Signaled(pid, s, _)) if pid == service => return 128 + s as i32,
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
}

/// `init_loop`, also moving the service's output into the log: signals arrive on a signalfd so
/// that one poll waits for both.
fn init_loop_logging(service: Pid, mut w: super::logs::Writer, fds: Vec<(OwnedFd, usize)>) -> i32 {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    let Ok(sfd) = SignalFd::with_flags(
        &SigSet::all(),
        SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
    ) else {
        return init_loop(service);
    };
    let mut open = vec![true; fds.len()];
    let mut status: Option<i32> = None;
    loop {
        let mut pfds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        let idx: Vec<usize> = (0..fds.len()).filter(|i| open[*i]).collect();
        for i in &idx {
            pfds.push(PollFd::new(fds[*i].0.as_fd(), PollFlags::POLLIN));
        }
        // Once the service has exited, only drain what is already written, then stop.
        let timeout = if status.is_some() {
            PollTimeout::ZERO
        } else {
            PollTimeout::NONE
        };
        let n = match poll(&mut pfds, timeout) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => 0,
        };
        let ready: Vec<bool> = pfds
            .iter()
            .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(pfds);
        for (k, i) in idx.iter().enumerate() {
            let (fd, stream) = &fds[*i];
            if ready[k + 1] && !super::logs::pump(fd, *stream, &mut w) {
                open[*i] = false;
            }
        }
        if ready[0] {
            while let Ok(Some(si)) = sfd.read_signal() {
                let Ok(sig) = Signal::try_from(si.ssi_signo as i32) else {
                    continue;
                };
                if sig != Signal::SIGCHLD {
                    let _ = kill(service, sig);
                    continue;
                }
                loop {
                    match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::Exited(pid, code)) if pid == service => status = Some(code),
                        Ok(WaitStatus::Signaled(pid, s, _)) if pid == service => {
                            status = Some(128 + s as i32)
                        }
                        Ok(WaitStatus::StillAlive) | Err(_) => break,
                        Ok(_) => continue,
                    }
                }
            }
        }
        if let Some(code) = status
            && (n == 0 || !open.iter().any(|o| *o))
        {
            for (i, (fd, stream)) in fds.iter().enumerate() {
                if open[i] {
                    super::logs::pump(fd, *stream, &mut w);
                }
            }
            w.flush();
            return code;
        }
    }
}

/// Writes a line to stderr, which is the container's log (for init's own complaints).
fn log(msg: &str) {
    let _ = writeln!(std::io::stderr(), "berth-init: {msg}");
}
