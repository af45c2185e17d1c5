//! `berth exec`: a command inside a running container of a service, in its namespaces and
//! cgroup, with the service's credentials and security setup. On a terminal (unless `-T`), the
//! command gets a terminal of the container's own devpts and this one is put in raw mode and
//! relayed; otherwise it gets pipes that this process copies to and from its own stdio, as
//! `docker exec` does. Either way the command never holds a descriptor of the caller's
//! terminal or files: a process it leaves behind in the container cannot read what is typed
//! after `exec` returned, nor write where the caller's output goes. The exit status is the
//! command's.

use std::io::IsTerminal;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use anyhow::{Context, bail};
use clap::Args;

use super::Global;
use super::lifecycle::select;
use crate::plan::State;
use crate::runtime::{ExecOptions, Inspect, Started};

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Run the command in the background
    #[arg(short, long)]
    pub detach: bool,
    /// Don't allocate a terminal (the default when stdin is not one)
    #[arg(short = 'T', long = "no-TTY")]
    pub no_tty: bool,
    /// Accepted for Compose compatibility (stdin is always attached)
    #[arg(short = 'i', long, hide = true)]
    pub interactive: bool,
    /// Set an environment variable (KEY=VALUE, or KEY to take it from this shell)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Run as this user (name or uid[:gid], resolved in the container)
    #[arg(short, long)]
    pub user: Option<String>,
    /// Working directory inside the container
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// Which replica of the service
    #[arg(long, default_value_t = 1)]
    pub index: u32,
    /// Every capability and no seccomp filter for this command
    #[arg(long)]
    pub privileged: bool,
    pub service: String,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

pub fn run(g: &Global, a: &ExecArgs) -> anyhow::Result<i32> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("berth exec needs root, as berth up does");
    }
    let s = select(g, std::slice::from_ref(&a.service))?;
    let Some(c) = s
        .containers
        .iter()
        .find(|c| !c.oneoff && c.index == a.index)
    else {
        bail!(
            "service {} has no container with index {} (see `berth ps`)",
            a.service,
            a.index
        );
    };
    match c.state {
        State::Running => {}
        State::Paused => bail!(
            "container {} is paused; `berth unpause {}` first",
            c.name,
            a.service
        ),
        _ => bail!(
            "service {} is not running (container {})",
            a.service,
            c.name
        ),
    }
    let env = a
        .env
        .iter()
        .filter_map(|e| match e.split_once('=') {
            Some(_) => Some(e.clone()),
            None => std::env::var(e).ok().map(|v| format!("{e}={v}")),
        })
        .collect();
    let tty = !a.no_tty && !a.detach && std::io::stdin().is_terminal();
    let opts = ExecOptions {
        argv: a.command.clone(),
        env,
        user: a.user.clone(),
        workdir: a.workdir.clone(),
        tty,
        privileged: a.privileged,
    };
    // Without a terminal: pipes, relayed by `relay_pipes` while the command runs.
    let mut pipes = None;
    let stdio = if a.detach {
        let null = || -> anyhow::Result<OwnedFd> {
            Ok(std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .context("open /dev/null")?
                .into())
        };
        [null()?, null()?, null()?]
    } else {
        let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("create a pipe");
        let (in_r, in_w) = pipe()?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        if !tty {
            pipes = Some((in_w, out_r, err_r));
        }
        // With a terminal these go unused (the command's stdio is the terminal).
        [in_r, out_w, err_w]
    };
    // Signals to forward are blocked before any thread starts, so the forwarding thread is
    // the only one that receives them.
    let forwarded = forwarded_signals();
    if !a.detach {
        let _ = forwarded.thread_block();
    }
    let mut ex = match s.rt.exec(&c.name, &opts, stdio) {
        Ok(ex) => ex,
        Err(crate::runtime::RuntimeError::Step { cause, .. }) => {
            eprintln!("berth: exec in {}: {cause}", c.name);
            return Ok(exec_failure_code(&cause));
        }
        Err(e) => return Err(e.into()),
    };
    if a.detach {
        return Ok(0);
    }
    let terminal = ex.take_terminal();
    let pid = ex.pid();
    let master = terminal.as_ref().map(|m| m.as_raw_fd());
    std::thread::spawn(move || forward(forwarded, pid, master));
    let code = match terminal {
        Some(master) => {
            let _raw = RawMode::enter();
            copy_size(master.as_raw_fd());
            relay(&master, &ex);
            drop(_raw);
            Started::wait(ex)
        }
        None => {
            if let Some((i, o, e)) = pipes {
                relay_pipes(i, o, e, &ex);
            }
            Started::wait(ex)
        }
    };
    match code {
        Ok(code) => Ok(code),
        Err(crate::runtime::RuntimeError::Step { cause, .. })
            if cause.setup_failure().is_some() =>
        {
            let (what, _) = cause.setup_failure().unwrap_or_default();
            eprintln!("berth: exec in {}: {what}", c.name);
            Ok(exec_failure_code(&cause))
        }
        Err(e) => Err(e).context("waiting for the command"),
    }
}

/// Docker's statuses for a command that could not run: 127 when it does not exist, 126 when
/// it cannot be executed (read off the setup process's errno, not its message).
fn exec_failure_code(cause: &crate::runtime::Cause) -> i32 {
    match cause.setup_failure() {
        Some((_, errno)) if errno == libc::ENOENT => 127,
        _ => 126,
    }
}

fn forwarded_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGWINCH,
    ] {
        set.add(s);
    }
    set
}

/// Forwards the signals berth receives to the command (as `docker exec` does when it has no
/// terminal); a terminal's size change goes to the command's terminal.
fn forward(set: nix::sys::signal::SigSet, pid: i32, master: Option<i32>) {
    use nix::sys::signal::Signal;
    loop {
        let Ok(sig) = set.wait() else { continue };
        match (sig, master) {
            (Signal::SIGWINCH, Some(m)) => copy_size(m),
            (Signal::SIGWINCH, None) => {}
            _ => {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
            }
        }
    }
}

/// Gives the command's terminal the size of ours.
fn copy_size(master: i32) {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills the winsize struct we pass; TIOCSWINSZ reads it. Both only act
    // on descriptors (ours and the master we hold).
    unsafe {
        if libc::ioctl(libc::STDIN_FILENO, libc::TIOCGWINSZ, &mut ws) == 0 {
            libc::ioctl(master, libc::TIOCSWINSZ, &ws);
        }
    }
}

/// Our terminal in raw mode (keys go to the command untouched: Ctrl-C is the command's), put
/// back as it was when dropped.
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enter() -> RawMode {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let Ok(old) = tcgetattr(&stdin) else {
            return RawMode(None);
        };
        let mut raw = old.clone();
        cfmakeraw(&mut raw);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &raw);
        RawMode(Some(old))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                old,
            );
        }
    }
}

/// Copies our stdin to the terminal and the terminal to our stdout until the command's side
/// of the terminal closes (EIO on the master) or the command's status arrives.
fn relay(master: &OwnedFd, ex: &impl Started) {
    use nix::poll::{PollFd, PollFlags};
    use std::io::Write;
    let mut buf = [0u8; 8192];
    let mut stdin_open = true;
    let stdin = std::io::stdin();
    loop {
        let mut fds = vec![
            PollFd::new(master.as_fd(), PollFlags::POLLIN),
            PollFd::new(ex.status_fd(), PollFlags::POLLIN),
        ];
        if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        let Some(ready) = poll_ready(&mut fds) else {
            return;
        };
        drop(fds);
        if ready[0] {
            match nix::unistd::read(master, &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&buf[..n]);
                    let _ = out.flush();
                }
            }
        }
        if ready.get(2) == Some(&true) {
            match nix::unistd::read(&stdin, &mut buf) {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => {
                    let _ = nix::unistd::write(master, &buf[..n]);
                }
            }
        }
        if ready[1] && !ready[0] {
            // The command has ended and the terminal has nothing more to give.
            return;
        }
    }
}

/// Copies our stdin into the command's stdin pipe and its stdout and stderr pipes to ours,
/// until the command's status arrives; then takes what it wrote before it ended and returns.
/// Our ends close with it: a process the command left behind reads end-of-file and its writes
/// fail. Our stdin is read only while the command runs, so no line typed after `exec` returned
/// is taken from the shell that ran it.
fn relay_pipes(stdin_w: OwnedFd, out_r: OwnedFd, err_r: OwnedFd, ex: &impl Started) {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    use nix::poll::{PollFd, PollFlags};
    for fd in [&stdin_w, &out_r, &err_r] {
        let _ = fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
    }
    let stdin = std::io::stdin();
    let mut to_cmd = Some(stdin_w);
    let mut stdin_open = true;
    let mut pending: Vec<u8> = Vec::new();
    let mut outs = [Some((out_r, 1)), Some((err_r, 2))];
    let mut buf = [0u8; 16384];
    // Copies what a pipe holds now to our descriptor `to`; false at end-of-file.
    let copy = |from: &OwnedFd, to: i32, buf: &mut [u8]| -> bool {
        loop {
            match nix::unistd::read(from, buf) {
                Ok(0) => return false,
                Ok(n) => {
                    // SAFETY: `to` is our stdout or stderr, open for the life of the process.
                    let out = unsafe { std::os::fd::BorrowedFd::borrow_raw(to) };
                    if nix::unistd::write(out, &buf[..n]).is_err() {
                        // Our reader is gone: keep draining so the command is not blocked.
                        continue;
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return true, // EAGAIN: nothing more for now
            }
        }
    };
    loop {
        let mut fds = vec![PollFd::new(ex.status_fd(), PollFlags::POLLIN)];
        let mut slots = Vec::new();
        for (i, o) in outs.iter().enumerate() {
            if let Some((fd, _)) = o {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                slots.push(i);
            }
        }
        let stdin_at = (stdin_open && pending.is_empty() && to_cmd.is_some()).then(|| {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        let cmd_at = match (&to_cmd, pending.is_empty()) {
            (Some(w), false) => {
                fds.push(PollFd::new(w.as_fd(), PollFlags::POLLOUT));
                Some(fds.len() - 1)
            }
            _ => None,
        };
        let Some(ready) = poll_ready(&mut fds) else {
            return;
        };
        drop(fds);
        for (k, i) in slots.iter().enumerate() {
            if ready[k + 1]
                && let Some((fd, to)) = &outs[*i]
                && !copy(fd, *to, &mut buf)
            {
                outs[*i] = None;
            }
        }
        if stdin_at.is_some_and(|k| ready[k]) {
            match nix::unistd::read(&stdin, &mut buf) {
                Ok(0) | Err(_) => {
                    // End of our input: the command reads end-of-file too.
                    stdin_open = false;
                    to_cmd = None;
                }
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            }
        }
        if cmd_at.is_some_and(|k| ready[k])
            && let Some(w) = &to_cmd
        {
            match nix::unistd::write(w, &pending) {
                Ok(n) => {
                    pending.drain(..n);
                }
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                // The command closed its stdin: nothing more goes to it.
                Err(_) => {
                    to_cmd = None;
                    pending.clear();
                }
            }
        }
        if ready[0] {
            // The command has ended: what it wrote before is in the pipes.
            for (fd, to) in outs.iter().flatten() {
                copy(fd, *to, &mut buf);
            }
            return;
        }
    }
}

/// Waits until one of `fds` is ready (a signal's interruption is waited out) and says which
/// are; None when poll fails.
fn poll_ready(fds: &mut [nix::poll::PollFd<'_>]) -> Option<Vec<bool>> {
    use nix::poll::{PollTimeout, poll};
    loop {
        match poll(fds, PollTimeout::NONE) {
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return None,
        }
    }
    Some(
        fds.iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect(),
    )
}
