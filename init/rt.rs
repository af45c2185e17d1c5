//! What both of berth's static programs (berth-init, berth-idle) stand on: raw Linux system
//! calls, the few C functions the compiler calls, the panic handler and the entry point. No
//! libc: each program is a few pages of code, so that a process that only waits costs the host
//! a few pages.

#![allow(dead_code)]

pub mod sys {
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
        pub const FCNTL: usize = 72;
        pub const EXECVEAT: usize = 322;
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
        pub const FCNTL: usize = 25;
        pub const EXECVEAT: usize = 281;
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

    /// Marks `fd` close-on-exec.
    pub fn cloexec(fd: i32) {
        const F_SETFD: usize = 2;
        const FD_CLOEXEC: usize = 1;
        // SAFETY: no memory is passed.
        unsafe { call(nr::FCNTL, [fd as usize, F_SETFD, FD_CLOEXEC, 0, 0, 0]) };
    }

    /// execveat(fd, "", argv, envp, AT_EMPTY_PATH): executes the file `fd` is open on. Returns
    /// only on failure (negative errno).
    ///
    /// # Safety
    /// `argv` and `envp` must be NULL-terminated arrays of NUL-terminated strings.
    pub unsafe fn execveat(fd: i32, argv: *const *const u8, envp: *const *const u8) -> isize {
        const AT_EMPTY_PATH: usize = 0x1000;
        let empty = b"\0";
        // SAFETY: the caller vouches for argv and envp; the path is an empty C string.
        unsafe {
            call(
                nr::EXECVEAT,
                [fd as usize, empty.as_ptr() as usize, argv as usize, envp as usize, AT_EMPTY_PATH, 0],
            )
        }
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
        signalfd(!0)
    }

    /// A non-blocking, close-on-exec signalfd for the signals of `mask` (bit n-1: signal n).
    pub fn signalfd(mask: u64) -> isize {
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

/// The initial stack: (argc, argv, envp).
///
/// # Safety
/// `sp` must be the stack pointer the kernel started the process with.
pub unsafe fn stack(sp: *const usize) -> (*const *const u8, *const *const u8) {
    // SAFETY: the kernel's initial stack layout: argc, argv[argc], NULL, envp..., NULL.
    unsafe {
        let argc = *sp;
        let argv = sp.add(1) as *const *const u8;
        (argv, sp.add(argc + 2) as *const *const u8)
    }
}

/// The value of the environment variable `key` (with its `=`).
///
/// # Safety
/// `envp` must be a NULL-terminated array of NUL-terminated strings that live as long as the
/// process (the initial stack's).
pub unsafe fn env(envp: *const *const u8, key: &[u8]) -> &'static [u8] {
    // SAFETY: the caller's contract.
    unsafe {
        let mut e = envp;
        while !(*e).is_null() {
            let s = *e;
            let mut len = 0;
            while *s.add(len) != 0 {
                len += 1;
            }
            let v = core::slice::from_raw_parts(s, len);
            if let Some(rest) = v.strip_prefix(key) {
                return rest;
            }
            e = e.add(1);
        }
        &[]
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
    main = sym crate::start,
);

#[cfg(target_arch = "aarch64")]
core::arch::global_asm!(
    ".globl _start",
    "_start:",
    "mov x0, sp",
    "bl {main}",
    "brk #0",
    main = sym crate::start,
);

