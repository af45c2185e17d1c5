//! berth-init: each container's PID 1, once the container is set up.
//!
//! berth builds the container in a clone of itself, forks the service, then executes this
//! program from a sealed memfd (made once, shared by every container) in that process. It is
//! a few kilobytes of static code with no libc, no allocator and no threads, so that an idle
//! container costs the host a few pages rather than a copy of berth's memory (the density
//! target: under 128 KiB per container, where Docker's conmon alone costs 466 KiB here).
//!
//! What it does: makes itself non-dumpable (CVE-2019-5736: nothing in the container may open
//! its memory or executable through /proc), lets the service go on to exec its command (by
//! closing the gate pipe it waits on), forwards every signal to the service, reaps every
//! zombie, writes the service's output to the container's log as JSON lines (rotated by size),
//! and at the service's exit records its status in the exit file and exits with it.
//!
//! Its parameters come in the environment variable BERTH_INIT (so `ps` in the container shows
//! just `berth-init`): space-separated `key=number` pairs, see `Params`. All signals arrive
//! blocked (berth blocked them before executing this), and are read from a signalfd.

#![no_std]
#![no_main]

// berth itself also uses the time formatter alone.
#[allow(dead_code)]
#[path = "record.rs"]
mod record;

#[path = "rt.rs"]
mod rt;
use rt::sys;

/// What berth hands init in BERTH_INIT.
#[derive(Default)]
struct Params {
    /// svc: the service's pid.
    svc: i32,
    /// exit: the exit-status file (truncated, at offset 0).
    exit: i32,
    /// gate: the pipe the service waits on before its exec.
    gate: i32,
    /// out, err: the service's output (read ends of pipes, or a terminal's master on out).
    streams: [i32; 2],
    /// dir, log: the log's directory and file; size: the file's size now.
    dir: i32,
    log: i32,
    size: u64,
    /// max: the size at which the log rotates; files: how many files are kept.
    max: u64,
    files: u32,
}

fn number(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

fn parse(text: &[u8]) -> Params {
    let mut p = Params {
        svc: -1,
        exit: -1,
        gate: -1,
        streams: [-1, -1],
        dir: -1,
        log: -1,
        ..Params::default()
    };
    for pair in text.split(|b| *b == b' ') {
        let mut kv = pair.splitn(2, |b| *b == b'=');
        let (Some(k), Some(v)) = (kv.next(), kv.next().and_then(number)) else {
            continue;
        };
        let fd = i32::try_from(v).unwrap_or(-1);
        match k {
            b"svc" => p.svc = fd,
            b"exit" => p.exit = fd,
            b"gate" => p.gate = fd,
            b"out" => p.streams[0] = fd,
            b"err" => p.streams[1] = fd,
            b"dir" => p.dir = fd,
            b"log" => p.log = fd,
            b"size" => p.size = v,
            b"max" => p.max = v,
            b"files" => p.files = u32::try_from(v).unwrap_or(1),
            _ => {}
        }
    }
    p
}

/// The longest line kept whole (Docker splits longer ones at 16 KiB).
const LINE: usize = 16 * 1024;

/// Buffers live in .bss: pages the kernel hands out only once touched, so a quiet service
/// costs none of them.
struct Log {
    dir: i32,
    file: i32,
    size: u64,
    max: u64,
    files: u32,
    partial: [[u8; LINE]; 2],
    plen: [usize; 2],
    record: [u8; record::max_len(LINE)],
}

/// All zeros, so that it is .bss (no file bytes, no page until touched); `start` fills in the
/// small fields.
static mut LOG: Log = Log {
    dir: 0,
    file: 0,
    size: 0,
    max: 0,
    files: 0,
    partial: [[0; LINE]; 2],
    plen: [0; 2],
    record: [0; record::max_len(LINE)],
};

const LOG_FILE: &[u8] = b"container.log\0";

/// `container.log.N` (NUL-terminated) into buf.
fn rotated_name(buf: &mut [u8; 32], n: u32) -> &[u8] {
    if n == 0 {
        return LOG_FILE;
    }
    let base = b"container.log.";
    buf[..base.len()].copy_from_slice(base);
    let mut d = [0u8; 20];
    let digits = record::decimal(&mut d, u64::from(n));
    let at = base.len() + digits.len();
    buf[base.len()..at].copy_from_slice(digits);
    buf[at] = 0;
    &buf[..=at]
}

impl Log {
    fn rotate(&mut self) {
        if self.files <= 1 {
            sys::ftruncate(self.file, 0);
            self.size = 0;
            return;
        }
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        for i in (0..self.files - 1).rev() {
            sys::rename(self.dir, rotated_name(&mut a, i), rotated_name(&mut b, i + 1));
        }
        const O_WRONLY: usize = 1;
        const O_CREAT: usize = 0o100;
        const O_APPEND: usize = 0o2000;
        const O_NOFOLLOW: usize = 0o400000;
        const O_CLOEXEC: usize = 0o2000000;
        let fd = sys::openat(
            self.dir,
            LOG_FILE,
            O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC,
            0o640,
        );
        if fd >= 0 {
            sys::close(self.file);
            self.file = fd as i32;
            self.size = 0;
        }
    }

    fn emit(&mut self, stream: usize, line: &[u8]) {
        let (secs, nanos) = sys::now();
        let n = record::format(&mut self.record, line, stream == 1, secs, nanos);
        if self.size > 0 && self.size + n as u64 > self.max {
            self.rotate();
        }
        if sys::write_all(self.file, &self.record[..n]) {
            self.size += n as u64;
        }
    }

    /// Bytes read from a stream: a record per complete line; the rest waits for its end.
    fn feed(&mut self, stream: usize, mut data: &[u8]) {
        while !data.is_empty() {
            let have = self.plen[stream];
            match data.iter().position(|b| *b == b'\n') {
                Some(nl) if have + nl < LINE => {
                    let end = have + nl + 1;
                    self.partial[stream][have..end].copy_from_slice(&data[..=nl]);
                    self.plen[stream] = 0;
                    let line: *const [u8] = &self.partial[stream][..end];
                    // SAFETY: emit writes only `record`, never `partial`.
                    self.emit(stream, unsafe { &*line });
                    data = &data[nl + 1..];
                }
                _ => {
                    let take = data.len().min(LINE - have);
                    self.partial[stream][have..have + take].copy_from_slice(&data[..take]);
                    self.plen[stream] = have + take;
                    data = &data[take..];
                    if self.plen[stream] == LINE {
                        self.flush(stream);
                    }
                }
            }
        }
    }

    fn flush(&mut self, stream: usize) {
        let len = self.plen[stream];
        if len > 0 {
            self.plen[stream] = 0;
            let line: *const [u8] = &self.partial[stream][..len];
            // SAFETY: emit writes only `record`, never `partial`.
            self.emit(stream, unsafe { &*line });
        }
    }
}

/// Reads what a stream has (non-blocking); false at its end. Without a log, the output is read
/// and dropped (cannot happen: berth passes streams only with a log).
fn pump(log: &mut Log, fd: i32, stream: usize) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match sys::read(fd, &mut buf) {
            0 => return false,
            sys::EAGAIN => return true,
            sys::EINTR => continue,
            n if n > 0 => log.feed(stream, &buf[..n as usize]),
            _ => return false,
        }
    }
}

fn status_code(raw: i32) -> i32 {
    if raw & 0x7f == 0 {
        (raw >> 8) & 0xff
    } else {
        128 + (raw & 0x7f)
    }
}

/// # Safety
/// Called once, by `_start`, with the initial stack pointer.
unsafe extern "C" fn start(sp: *const usize) -> ! {
    const PR_SET_DUMPABLE: usize = 4;
    const PR_SET_NAME: usize = 15;
    // First: nothing in the container may open this process's memory or executable.
    sys::prctl(PR_SET_DUMPABLE, 0);
    sys::prctl(PR_SET_NAME, c"berth-init".as_ptr() as usize);
    // SAFETY: sp is the initial stack pointer (the caller's contract).
    let p = parse(unsafe { rt::env(rt::stack(sp).1, b"BERTH_INIT=") });
    // The service may exec now.
    if p.gate >= 0 {
        sys::close(p.gate);
    }
    // SAFETY: the only reference to LOG in this single-threaded program.
    let log = unsafe { &mut *core::ptr::addr_of_mut!(LOG) };
    log.dir = p.dir;
    log.file = p.log;
    log.size = p.size;
    log.max = if p.max == 0 { u64::MAX } else { p.max };
    log.files = p.files.max(1);
    let mut open = [p.streams[0] >= 0 && p.log >= 0, p.streams[1] >= 0 && p.log >= 0];
    let sfd = sys::signalfd_all();
    if sfd < 0 {
        sys::exit(1);
    }
    let sfd = sfd as i32;
    let mut status: Option<i32> = None;
    loop {
        let mut fds = [
            sys::PollFd { fd: sfd, events: sys::POLLIN, revents: 0 },
            sys::PollFd { fd: if open[0] { p.streams[0] } else { -1 }, events: sys::POLLIN, revents: 0 },
            sys::PollFd { fd: if open[1] { p.streams[1] } else { -1 }, events: sys::POLLIN, revents: 0 },
        ];
        // Once the service has exited, only drain what is already written, then stop.
        let n = sys::poll(&mut fds, status.is_some());
        if n == sys::EINTR {
            continue;
        }
        for s in 0..2 {
            if open[s] && fds[s + 1].revents != 0 && !pump(log, p.streams[s], s) {
                open[s] = false;
            }
        }
        if fds[0].revents != 0 {
            // struct signalfd_siginfo: 128 bytes, the signal number first.
            let mut si = [0u8; 128];
            while sys::read(sfd, &mut si) == 128 {
                let sig = i32::from_ne_bytes([si[0], si[1], si[2], si[3]]);
                const SIGCHLD: i32 = 17;
                if sig != SIGCHLD {
                    // The service decides what the signal means.
                    sys::kill(p.svc, sig);
                    continue;
                }
                loop {
                    let (pid, raw) = sys::reap();
                    if pid <= 0 {
                        break;
                    }
                    if pid == p.svc as isize {
                        status = Some(status_code(raw));
                    }
                }
            }
        }
        if let Some(code) = status
            && (n == 0 || !open.iter().any(|o| *o))
        {
            for (s, &still) in open.iter().enumerate() {
                if still {
                    pump(log, p.streams[s], s);
                }
                log.flush(s);
            }
            if p.exit >= 0 {
                // One write: berth may read the file the moment it appears complete.
                let (mut d, mut line) = ([0u8; 20], [b'\n'; 4]);
                let digits = record::decimal(&mut d, code.clamp(0, 255) as u64);
                line[..digits.len()].copy_from_slice(digits);
                sys::write_all(p.exit, &line[..=digits.len()]);
            }
            sys::exit(code);
        }
    }
}
