//! berth-idle: what a project's supervisor becomes while nothing happens.
//!
//! A supervisor spends nearly all of its life waiting: for a container to end, a file to be
//! saved, a timer, a packet on a published port or a DNS query. Waiting in berth costs the host
//! the pages of code and heap its event loop keeps resident (2.3–2.8 MiB PSS measured with
//! bench/updown.sh); waiting here costs a few pages. So once the supervisor has been quiet for a
//! while, it hands what it knows to itself (a memfd), and executes this program in its own
//! process: same pid, same children, same descriptors (the project lock, the published ports'
//! and DNS sockets, one pidfd per running container, a timerfd for its next deadline, an
//! inotify descriptor on the project's files). The moment any of them is ready, this program
//! executes berth again with the argv it was given, and berth picks up where it left off.
//!
//! It reads nothing but readiness, with one exception: inotify events are filtered by name, so
//! that saving a source file beside the project file does not wake berth.
//!
//! Parameters, in the environment:
//! - BERTH_IDLE: `exe=N wake=A,B,... hold=C,D,... inotify=N`. `exe` is berth's executable
//!   (opened with O_PATH). `wake` descriptors are berth-idle's own (pidfds, the timer): they
//!   are closed when berth is executed again. `hold` descriptors (sockets) wake it too, and
//!   berth takes them back. The inotify descriptor is closed, like `wake`'s.
//! - BERTH_IDLE_NAMES: `WD/NAME/WD/NAME...`: the names that matter in each watched directory.
//!   An event on a watch itself (no name: the state directory removed) always wakes.
//!
//! SIGTERM and SIGINT arrive blocked (berth blocked them before executing this) and are read
//! from a signalfd: berth, executed again, finds them pending and stops as it would have.

#![no_std]
#![no_main]

// The decimal formatter alone.
#[allow(dead_code)]
#[path = "record.rs"]
mod record;

#[path = "rt.rs"]
mod rt;
use rt::sys;

/// Descriptors it can wait on: a pidfd per container (hundreds on a dense host), the sockets,
/// the timer, the inotify descriptor and the signalfd.
const MAX_FDS: usize = 2048;

struct Params {
    exe: i32,
    inotify: i32,
    wake: [i32; MAX_FDS],
    nwake: usize,
    hold: [i32; MAX_FDS],
    nhold: usize,
}

fn number(s: &[u8]) -> Option<i32> {
    if s.is_empty() || s.len() > 9 {
        return None;
    }
    let mut n: i32 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + i32::from(c - b'0');
    }
    Some(n)
}

fn list(value: &[u8], into: &mut [i32; MAX_FDS], n: &mut usize) {
    for f in value.split(|&c| c == b',') {
        if let Some(fd) = number(f)
            && *n < MAX_FDS
        {
            into[*n] = fd;
            *n += 1;
        }
    }
}

fn parse(text: &[u8], p: &mut Params) {
    for pair in text.split(|&c| c == b' ') {
        let mut kv = pair.splitn(2, |&c| c == b'=');
        let (Some(k), Some(v)) = (kv.next(), kv.next()) else {
            continue;
        };
        match k {
            b"exe" => p.exe = number(v).unwrap_or(-1),
            b"inotify" => p.inotify = number(v).unwrap_or(-1),
            b"wake" => list(v, &mut p.wake, &mut p.nwake),
            b"hold" => list(v, &mut p.hold, &mut p.nhold),
            _ => {}
        }
    }
}

/// Whether an inotify event on watch `wd` for `name` is one berth asked to be woken for.
fn wanted(names: &[u8], wd: i32, name: &[u8]) -> bool {
    let mut it = names.split(|&c| c == b'/');
    while let (Some(w), Some(n)) = (it.next(), it.next()) {
        if number(w) == Some(wd) && n == name {
            return true;
        }
    }
    false
}

/// Reads what the inotify descriptor holds; true if one event matters.
fn inotify_wakes(fd: i32, names: &[u8]) -> bool {
    // struct inotify_event: wd, mask, cookie, len (4 bytes each), then `len` bytes of name,
    // NUL-padded.
    let mut buf = [0u8; 4096];
    loop {
        let n = sys::read(fd, &mut buf);
        if n == sys::EINTR {
            continue;
        }
        if n <= 0 {
            // Drained (EAGAIN), or an error: an error wakes berth, which knows more.
            return n != sys::EAGAIN;
        }
        let mut at = 0usize;
        let end = n as usize;
        while at + 16 <= end {
            let word = |i: usize| [buf[at + i], buf[at + i + 1], buf[at + i + 2], buf[at + i + 3]];
            let wd = i32::from_ne_bytes(word(0));
            let len = u32::from_ne_bytes(word(12)) as usize;
            let raw = &buf[(at + 16).min(end)..(at + 16 + len).min(end)];
            let name = match raw.iter().position(|&c| c == 0) {
                Some(z) => &raw[..z],
                None => raw,
            };
            // wd -1: the queue overflowed; no name: the watched directory itself changed.
            if wd < 0 || name.is_empty() || wanted(names, wd, name) {
                return true;
            }
            at += 16 + len;
        }
    }
}

static mut PARAMS: Params = Params {
    exe: 0,
    inotify: 0,
    wake: [0; MAX_FDS],
    nwake: 0,
    hold: [0; MAX_FDS],
    nhold: 0,
};

static mut POLL: [sys::PollFd; MAX_FDS * 2 + 2] =
    [const { sys::PollFd { fd: 0, events: 0, revents: 0 } }; MAX_FDS * 2 + 2];

/// # Safety
/// Called once, by `_start`, with the initial stack pointer.
unsafe extern "C" fn start(sp: *const usize) -> ! {
    const PR_SET_NAME: usize = 15;
    sys::prctl(PR_SET_NAME, c"berth-idle".as_ptr() as usize);
    // SAFETY: sp is the initial stack pointer (the caller's contract).
    let (argv, envp) = unsafe { rt::stack(sp) };
    // SAFETY: the only references to PARAMS and POLL in this single-threaded program.
    let (p, fds) = unsafe {
        (
            &mut *core::ptr::addr_of_mut!(PARAMS),
            &mut *core::ptr::addr_of_mut!(POLL),
        )
    };
    // Zero-initialised statics cost no file bytes: the defaults are set here.
    p.exe = -1;
    p.inotify = -1;
    // SAFETY: envp is the initial stack's environment.
    parse(unsafe { rt::env(envp, b"BERTH_IDLE=") }, p);
    // SAFETY: as above.
    let names = unsafe { rt::env(envp, b"BERTH_IDLE_NAMES=") };
    // SIGHUP, SIGINT, SIGQUIT, SIGTERM (bits 0, 1, 2, 14): the ones berth blocked.
    let sfd = sys::signalfd((1 << 0) | (1 << 1) | (1 << 2) | (1 << 14)) as i32;
    let mut n = 0;
    let mut push = |fd: i32| {
        if fd >= 0 {
            fds[n] = sys::PollFd { fd, events: sys::POLLIN, revents: 0 };
            n += 1;
        }
    };
    push(sfd);
    push(p.inotify);
    for &fd in p.wake[..p.nwake].iter().chain(&p.hold[..p.nhold]) {
        push(fd);
    }
    loop {
        let r = sys::poll(&mut fds[..n], false);
        if r == sys::EINTR {
            continue;
        }
        if r < 0 {
            break;
        }
        // A signal stays pending on the signalfd for berth to find; only inotify's events are
        // read here, and only its quiet ones keep this program waiting.
        let only_files = fds[..n]
            .iter()
            .all(|f| f.revents == 0 || f.fd == p.inotify);
        if !only_files || inotify_wakes(p.inotify, names) {
            break;
        }
    }
    // The pidfds, the timer, the inotify descriptor and berth's executable are this program's
    // alone: berth, executed again, opens what it needs afresh.
    for &fd in &p.wake[..p.nwake] {
        sys::cloexec(fd);
    }
    sys::cloexec(p.inotify);
    sys::cloexec(p.exe);
    // SAFETY: argv and envp are the initial stack's NULL-terminated arrays.
    let err = unsafe { sys::execveat(p.exe, argv, envp) };
    let mut d = [0u8; 20];
    sys::write_all(2, b"berth-idle: cannot execute berth again (errno ");
    sys::write_all(2, record::decimal(&mut d, err.unsigned_abs() as u64));
    sys::write_all(2, b")\n");
    sys::exit(1)
}
