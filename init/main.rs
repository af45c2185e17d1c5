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

mod sys {
    //! Raw Linux system calls.

    #[cfg(target_arch = "x86_64")]
    pub mod nr {
        pub const READ: usize = 0;
        pub const WRITE: usize = 1;
        pub const CLOSE: usize = 3;
        pub const KILL: usize = 62;
        pub const WAIT4: usize = 61;
        pub const FTRUNCATE: usize = 77;
        pub const PRCTL: usize = 157;
        pub const CLOCK_GETTIME: usize = 228;
        pub const EXIT_GROUP: usize = 231;
        pub const OPENAT: usize = 257;
        pub const PPOLL: usize = 271;
        pub const SIGNALFD4: usize = 289;
        pub const RENAMEAT2: usize = 316;
    }

    #[cfg(target_arch = "aarch64")]
    pub mod nr {
        pub const READ: usize = 63;
        pub const WRITE: usize = 64;
        pub const CLOSE: usize = 57;
        pub const KILL: usize = 129;
        pub const WAIT4: usize = 260;
        pub const FTRUNCATE: usize = 46;
        pub const PRCTL: usize = 167;
        pub const CLOCK_GETTIME: usize = 113;
        pub const EXIT_GROUP: usize = 94;
        pub const OPENAT: usize = 56;
        pub const PPOLL: usize = 73;
        pub const SIGNALFD4: usize = 74;
        pub const RENAMEAT2: usize = 276;
    }

    /// A system call with up to six arguments; returns the kernel's result (negative errno).
    ///
    /// # Safety
    /// The arguments must be valid for the call `n` (pointers to live memory of the sizes the
    /// kernel reads or writes).
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn call(n: usize, a: [usize; 6]) -> isize {
        let r: isize;
        // SAFETY: the caller vouches for the arguments; `syscall` clobbers rcx and r11 only.
        unsafe {
            core::arch::asm!(
                "syscall",
                inlateout("rax") n as isize => r,
                in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
                in("r10") a[3], in("r8") a[4], in("r9") a[5],
                lateout("rcx") _, lateout("r11") _,
                options(nostack),
            );
        }
        r
    }

    /// # Safety
    /// As for the x86_64 version.
    #[cfg(target_arch = "aarch64")]
    pub unsafe fn call(n: usize, a: [usize; 6]) -> isize {
        let r: isize;
        // SAFETY: the caller vouches for the arguments.
        unsafe {
            core::arch::asm!(
                "svc 0",
                in("x8") n,
                inlateout("x0") a[0] as isize => r,
                in("x1") a[1], in("x2") a[2], in("x3") a[3], in("x4") a[4], in("x5") a[5],
                options(nostack),
            );
        }
        r
    }

    pub const EINTR: isize = -4;
    pub const EAGAIN: isize = -11;

    pub fn read(fd: i32, buf: &mut [u8]) -> isize {
        // SAFETY: the kernel writes at most buf.len() bytes into buf.
        unsafe { call(nr::READ, [fd as usize, buf.as_mut_ptr() as usize, buf.len(), 0, 0, 0]) }
    }

    pub fn write(fd: i32, buf: &[u8]) -> isize {
        // SAFETY: the kernel reads at most buf.len() bytes from buf.
        unsafe { call(nr::WRITE, [fd as usize, buf.as_ptr() as usize, buf.len(), 0, 0, 0]) }
    }

    /// Writes all of `buf` (false when the file refuses).
    pub fn write_all(fd: i32, mut buf: &[u8]) -> bool {
        while !buf.is_empty() {
            match write(fd, buf) {
                EINTR => continue,
                n if n > 0 => buf = &buf[n as usize..],
                _ => return false,
            }
        }
        true
    }

    pub fn close(fd: i32) {
        // SAFETY: no memory is passed.
        unsafe { call(nr::CLOSE, [fd as usize, 0, 0, 0, 0, 0]) };
    }

    pub fn kill(pid: i32, sig: i32) {
        // SAFETY: no memory is passed.
        unsafe { call(nr::KILL, [pid as usize, sig as usize, 0, 0, 0, 0]) };
    }

    /// wait4(-1, WNOHANG): (pid, raw status); pid 0 when no child has changed state, negative
    /// when there is no child.
    pub fn reap() -> (isize, i32) {
        let mut status: i32 = 0;
        const WNOHANG: usize = 1;
        // SAFETY: the kernel writes one int into `status`; no rusage is asked for.
        let pid = unsafe {
            call(
                nr::WAIT4,
                [usize::MAX, &mut status as *mut i32 as usize, WNOHANG, 0, 0, 0],
            )
        };
        (pid, status)
    }

    pub fn ftruncate(fd: i32, len: usize) {
        // SAFETY: no memory is passed.
        unsafe { call(nr::FTRUNCATE, [fd as usize, len, 0, 0, 0, 0]) };
    }

    pub fn prctl(option: usize, arg: usize) -> isize {
        // SAFETY: the options used (PR_SET_DUMPABLE, PR_SET_NAME) read at most 16 bytes at arg.
        unsafe { call(nr::PRCTL, [option, arg, 0, 0, 0, 0]) }
    }

    /// CLOCK_REALTIME: (seconds, nanoseconds).
    pub fn now() -> (i64, u32) {
        let mut ts = [0i64; 2];
        // SAFETY: the kernel writes one struct timespec (two 64-bit words) into ts.
        unsafe { call(nr::CLOCK_GETTIME, [0, ts.as_mut_ptr() as usize, 0, 0, 0, 0]) };
        (ts[0], ts[1] as u32)
    }

    pub fn exit(code: i32) -> ! {
        loop {
            // SAFETY: no memory is passed; exit_group does not return.
            unsafe { call(nr::EXIT_GROUP, [code as usize, 0, 0, 0, 0, 0]) };
        }
    }

    /// openat(dir, name (NUL-terminated), flags, mode).
    pub fn openat(dir: i32, name: &[u8], flags: usize, mode: usize) -> isize {
        debug_assert!(name.last() == Some(&0));
        // SAFETY: name is NUL-terminated memory that outlives the call.
        unsafe { call(nr::OPENAT, [dir as usize, name.as_ptr() as usize, flags, mode, 0, 0]) }
    }

    pub fn rename(dir: i32, from: &[u8], to: &[u8]) {
        // SAFETY: both names are NUL-terminated memory that outlives the call.
        unsafe {
            call(
                nr::RENAMEAT2,
                [dir as usize, from.as_ptr() as usize, dir as usize, to.as_ptr() as usize, 0, 0],
            )
        };
    }

    #[repr(C)]
    pub struct PollFd {
        pub fd: i32,
        pub events: i16,
        pub revents: i16,
    }

    pub const POLLIN: i16 = 1;

    /// ppoll with no timeout (wait) or a zero one (`nowait`).
    pub fn poll(fds: &mut [PollFd], nowait: bool) -> isize {
        let zero = [0i64; 2];
        let timeout = if nowait { zero.as_ptr() as usize } else { 0 };
        // SAFETY: fds is an array of pollfd of the given length; the timeout, when given,
        // is a timespec that outlives the call; no signal mask is passed.
        unsafe {
            call(nr::PPOLL, [fds.as_mut_ptr() as usize, fds.len(), timeout, 0, 8, 0])
        }
    }

    /// A non-blocking, close-on-exec signalfd for every signal.
    pub fn signalfd_all() -> isize {
        let mask: u64 = !0;
        const SFD_NONBLOCK: usize = 0o4000;
        const SFD_CLOEXEC: usize = 0o2000000;
        // SAFETY: the kernel reads 8 bytes of signal mask.
        unsafe {
            call(
                nr::SIGNALFD4,
                [usize::MAX, &mask as *const u64 as usize, 8, SFD_NONBLOCK | SFD_CLOEXEC, 0, 0],
            )
        }
    }
}

// The compiler may call these for copies and comparisons; there is no libc to provide them.
// Volatile accesses keep it from turning the loops back into calls to themselves.

/// # Safety
/// `dst` and `src` must be valid for `n` bytes and not overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    for i in 0..n {
        // SAFETY: both ranges are valid for n bytes (the caller's contract).
        unsafe { core::ptr::write_volatile(dst.add(i), core::ptr::read_volatile(src.add(i))) };
    }
    dst
}

/// # Safety
/// `dst` and `src` must be valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) {
        // SAFETY: as memcpy; copying upwards is safe when dst is below src.
        return unsafe { memcpy(dst, src, n) };
    }
    for i in (0..n).rev() {
        // SAFETY: both ranges are valid for n bytes; copying downwards handles the overlap.
        unsafe { core::ptr::write_volatile(dst.add(i), core::ptr::read_volatile(src.add(i))) };
    }
    dst
}

/// # Safety
/// `dst` must be valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    for i in 0..n {
        // SAFETY: dst is valid for n bytes.
        unsafe { core::ptr::write_volatile(dst.add(i), c as u8) };
    }
    dst
}

/// # Safety
/// `a` and `b` must be valid for `n` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: both are valid for n bytes.
        let (x, y) = unsafe { (core::ptr::read_volatile(a.add(i)), core::ptr::read_volatile(b.add(i))) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// # Safety
/// As memcmp.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the same contract.
    unsafe { memcmp(a, b, n) }
}

/// # Safety
/// `s` must point to a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn strlen(s: *const u8) -> usize {
    let mut n = 0;
    // SAFETY: the string is NUL-terminated (the caller's contract).
    while unsafe { core::ptr::read_volatile(s.add(n)) } != 0 {
        n += 1;
    }
    n
}

/// The precompiled `core` refers to the unwinder's personality routine from its unwind
/// tables; this program aborts on panic and never unwinds, so nothing calls it.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    sys::exit(127)
}

#[cfg(target_arch = "x86_64")]
core::arch::global_asm!(
    ".globl _start",
    "_start:",
    "mov rdi, rsp",
    "and rsp, -16",
    "call {main}",
    "ud2",
    main = sym start,
);

#[cfg(target_arch = "aarch64")]
core::arch::global_asm!(
    ".globl _start",
    "_start:",
    "mov x0, sp",
    "bl {main}",
    "brk #0",
    main = sym start,
);

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

/// BERTH_INIT's value from the initial stack (argc, argv..., NULL, envp..., NULL).
///
/// # Safety
/// `sp` must be the stack pointer the kernel started the process with.
unsafe fn params_from_stack(sp: *const usize) -> &'static [u8] {
    // SAFETY: the kernel's initial stack layout; every pointer there is a NUL-terminated
    // string that lives as long as the process.
    unsafe {
        let argc = *sp;
        let mut env = sp.add(argc + 2) as *const *const u8;
        while !(*env).is_null() {
            let s = *env;
            let mut len = 0;
            while *s.add(len) != 0 {
                len += 1;
            }
            let v = core::slice::from_raw_parts(s, len);
            if let Some(rest) = v.strip_prefix(b"BERTH_INIT=") {
                return rest;
            }
            env = env.add(1);
        }
        &[]
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
    let p = parse(unsafe { params_from_stack(sp) });
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
