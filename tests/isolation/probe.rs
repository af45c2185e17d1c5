//! Isolation probe: tries one way out of a container and reports what the kernel said.
//!
//! A standalone program (std only, no crates, x86_64 Linux only) that the isolation tests copy
//! into a container. It is not a cargo test target; build it as a static binary with:
//!
//! ```text
//! rustc --edition 2021 -O -C target-feature=+crt-static tests/isolation/probe.rs -o /tmp/probe
//! ```
//!
//! Usage: `probe NAME [ARGS...]` (`probe list` prints the names).
//!
//! Output: exactly one line on stdout,
//!   * `NAME: ok` when the operation succeeded (the way out is open), or
//!   * `NAME: <ERRNO_NAME> (<step>)` when the kernel refused it, e.g. `mknod-write: EPERM (open)`.
//!
//! Details (what was found, what a scan saw) go to stderr, one `# ` line each.
//!
//! Exit status: 0 when the operation succeeded; otherwise the errno number (1..=254, larger
//! errnos are reported as 254); 255 for a usage error.
//!
//! Scans (`proc-root`, `proc-exe`, `inherited-fds`, `chroot-breakout`) exit 0 when they found a
//! way out (and print it to stderr) and exit 1 (printed as `EPERM (<summary>)`) when they found
//! nothing.
//!
//! A few probes cannot "succeed" without doing damage, so they call the syscall in a way that
//! fails harmlessly *after* the kernel's permission checks, and report `ok` when they got that
//! far: `init-module` (ENOEXEC for an empty image), `reboot` (EINVAL for a wrong magic number),
//! and `kexec-load` when an image is already loaded (EINVAL for a foreign architecture;
//! otherwise it unloads the, absent, image with zero segments).
//!
//! Every probe is harmless when it succeeds: values are written back unchanged, a device write
//! is one byte at offset 100 (use a scratch disk), nothing is truncated, every node, directory,
//! mount, key or descriptor the probe creates is removed or dies with the process.

use std::collections::BTreeMap;
use std::ffi::{c_long, CString};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::process::exit;

extern "C" {
    fn syscall(num: c_long, ...) -> c_long;
}

// x86_64 syscall numbers.
const SYS_CHDIR: c_long = 80;
const SYS_WAIT4: c_long = 61;
const SYS_GETTIMEOFDAY: c_long = 96;
const SYS_PTRACE: c_long = 101;
const SYS_GETUID: c_long = 102;
const SYS_GETGID: c_long = 104;
const SYS_STATFS: c_long = 137;
const SYS_PIVOT_ROOT: c_long = 155;
const SYS_CHROOT: c_long = 161;
const SYS_SETTIMEOFDAY: c_long = 164;
const SYS_MOUNT: c_long = 165;
const SYS_UMOUNT2: c_long = 166;
const SYS_REBOOT: c_long = 169;
const SYS_IOPERM: c_long = 173;
const SYS_INIT_MODULE: c_long = 175;
const SYS_KEXEC_LOAD: c_long = 246;
const SYS_ADD_KEY: c_long = 248;
const SYS_KEYCTL: c_long = 250;
const SYS_MKNODAT: c_long = 259;
const SYS_UNSHARE: c_long = 272;
const SYS_PERF_EVENT_OPEN: c_long = 298;
const SYS_OPEN_BY_HANDLE_AT: c_long = 304;
const SYS_BPF: c_long = 321;
const SYS_USERFAULTFD: c_long = 323;
const SYS_IO_URING_SETUP: c_long = 425;
const SYS_FSOPEN: c_long = 430;

const AT_FDCWD: c_long = -100;
const O_RDONLY: c_long = 0;
const O_NONBLOCK: i32 = 0o4000;
const O_CLOEXEC: c_long = 0o2000000;
const S_IFCHR: c_long = 0o020000;
const S_IFBLK: c_long = 0o060000;
const MNT_DETACH: c_long = 2;
const CLONE_NEWNS: c_long = 0x0002_0000;
const CLONE_NEWCGROUP: c_long = 0x0200_0000;
const CLONE_NEWUSER: c_long = 0x1000_0000;
const KEYCTL_JOIN_SESSION_KEYRING: c_long = 1;
const KEY_SPEC_PROCESS_KEYRING: c_long = -2;
const BPF_MAP_CREATE: c_long = 0;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const PERF_TYPE_SOFTWARE: u64 = 1;
const PERF_ATTR_SIZE_VER0: u64 = 64;
const PTRACE_ATTACH: c_long = 16;
const PTRACE_DETACH: c_long = 17;
const WALL: c_long = 0x4000_0000;
const LINUX_REBOOT_MAGIC1: c_long = 0xfee1_dead;
const KEXEC_ARCH_ARM: c_long = 40 << 16;
const FILEID_INO32_GEN: u32 = 1;
const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

const EPERM: i32 = 1;
const ENOENT: i32 = 2;
const ENOEXEC: i32 = 8;
const EIO: i32 = 5;
const EINVAL: i32 = 22;

/// Why a probe did not succeed.
enum Fail {
    /// The kernel refused `step` with this errno (or a scan found nothing: EPERM + summary).
    Errno(i32, String),
    /// Bad command line.
    Usage(String),
}

type Res = Result<(), Fail>;

fn refused(errno: i32, step: &str) -> Fail {
    Fail::Errno(errno, step.to_string())
}

fn io_err(e: &std::io::Error, step: &str) -> Fail {
    refused(e.raw_os_error().unwrap_or(EIO), step)
}

fn usage(msg: &str) -> Fail {
    Fail::Usage(msg.to_string())
}

/// One detail line on stderr, written with a single write so that it does not interleave
/// with stdout when a container runtime merges the two streams.
fn note(msg: &str) {
    let _ = std::io::stderr().write_all(format!("# {msg}\n").as_bytes());
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(EIO)
}

/// A raw syscall with up to six arguments: the result, or the errno.
///
/// # Safety
/// Every pointer passed in `args` must be valid for whatever syscall `nr` does with it, for the
/// duration of the call.
unsafe fn sys(nr: c_long, args: &[c_long]) -> Result<c_long, i32> {
    let mut a = [0 as c_long; 6];
    a[..args.len()].copy_from_slice(args);
    // SAFETY: the caller vouches for the pointers in `args`; unused trailing arguments are 0
    // and the kernel ignores the ones the syscall does not take.
    let r = unsafe { syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
    if r == -1 {
        Err(last_errno())
    } else {
        Ok(r)
    }
}

/// Takes ownership of a descriptor a syscall just returned, so that it is closed on drop.
fn own_fd(fd: c_long) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful syscall that creates a descriptor; nothing
    // else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn cstr(s: &str) -> Result<CString, Fail> {
    CString::new(s).map_err(|_| usage("argument contains a NUL byte"))
}

fn p(c: &CString) -> c_long {
    c.as_ptr() as c_long
}

fn errno_name(e: i32) -> String {
    const NAMES: [&str; 134] = [
        "0",
        "EPERM",
        "ENOENT",
        "ESRCH",
        "EINTR",
        "EIO",
        "ENXIO",
        "E2BIG",
        "ENOEXEC",
        "EBADF",
        "ECHILD",
        "EAGAIN",
        "ENOMEM",
        "EACCES",
        "EFAULT",
        "ENOTBLK",
        "EBUSY",
        "EEXIST",
        "EXDEV",
        "ENODEV",
        "ENOTDIR",
        "EISDIR",
        "EINVAL",
        "ENFILE",
        "EMFILE",
        "ENOTTY",
        "ETXTBSY",
        "EFBIG",
        "ENOSPC",
        "ESPIPE",
        "EROFS",
        "EMLINK",
        "EPIPE",
        "EDOM",
        "ERANGE",
        "EDEADLK",
        "ENAMETOOLONG",
        "ENOLCK",
        "ENOSYS",
        "ENOTEMPTY",
        "ELOOP",
        "E41",
        "ENOMSG",
        "EIDRM",
        "ECHRNG",
        "EL2NSYNC",
        "EL3HLT",
        "EL3RST",
        "ELNRNG",
        "EUNATCH",
        "ENOCSI",
        "EL2HLT",
        "EBADE",
        "EBADR",
        "EXFULL",
        "ENOANO",
        "EBADRQC",
        "EBADSLT",
        "E58",
        "EBFONT",
        "ENOSTR",
        "ENODATA",
        "ETIME",
        "ENOSR",
        "ENONET",
        "ENOPKG",
        "EREMOTE",
        "ENOLINK",
        "EADV",
        "ESRMNT",
        "ECOMM",
        "EPROTO",
        "EMULTIHOP",
        "EDOTDOT",
        "EBADMSG",
        "EOVERFLOW",
        "ENOTUNIQ",
        "EBADFD",
        "EREMCHG",
        "ELIBACC",
        "ELIBBAD",
        "ELIBSCN",
        "ELIBMAX",
        "ELIBEXEC",
        "EILSEQ",
        "ERESTART",
        "ESTRPIPE",
        "EUSERS",
        "ENOTSOCK",
        "EDESTADDRREQ",
        "EMSGSIZE",
        "EPROTOTYPE",
        "ENOPROTOOPT",
        "EPROTONOSUPPORT",
        "ESOCKTNOSUPPORT",
        "EOPNOTSUPP",
        "EPFNOSUPPORT",
        "EAFNOSUPPORT",
        "EADDRINUSE",
        "EADDRNOTAVAIL",
        "ENETDOWN",
        "ENETUNREACH",
        "ENETRESET",
        "ECONNABORTED",
        "ECONNRESET",
        "ENOBUFS",
        "EISCONN",
        "ENOTCONN",
        "ESHUTDOWN",
        "ETOOMANYREFS",
        "ETIMEDOUT",
        "ECONNREFUSED",
        "EHOSTDOWN",
        "EHOSTUNREACH",
        "EALREADY",
        "EINPROGRESS",
        "ESTALE",
        "EUCLEAN",
        "ENOTNAM",
        "ENAVAIL",
        "EISNAM",
        "EREMOTEIO",
        "EDQUOT",
        "ENOMEDIUM",
        "EMEDIUMTYPE",
        "ECANCELED",
        "ENOKEY",
        "EKEYEXPIRED",
        "EKEYREVOKED",
        "EKEYREJECTED",
        "EOWNERDEAD",
        "ENOTRECOVERABLE",
        "ERFKILL",
        "EHWPOISON",
    ];
    match e {
        1..=133 => NAMES[e as usize].to_string(),
        512 => "ERESTARTSYS".into(),
        524 => "ENOTSUPP".into(),
        _ => format!("E{e}"),
    }
}

const PROBES: &[&str] = &[
    "mknod-read PATH MAJOR MINOR",
    "mknod-write PATH MAJOR MINOR",
    "open-read PATH",
    "open-write PATH",
    "write-same PATH",
    "sysfs-write",
    "cgroup-write",
    "mount",
    "umount PATH",
    "pivot-root",
    "chroot-breakout",
    "userns",
    "userns-mount",
    "userns-release-agent",
    "fsopen",
    "keyctl",
    "add-key",
    "bpf",
    "perf-event-open",
    "userfaultfd",
    "io-uring",
    "open-by-handle [MOUNT_PATH]",
    "kexec-load",
    "init-module",
    "reboot",
    "ioperm",
    "settimeofday",
    "ptrace PID",
    "kmsg",
    "proc-root",
    "proc-exe",
    "inherited-fds",
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(name) = args.get(1).map(String::as_str) else {
        eprintln!("usage: probe NAME [ARGS...]   (probe list: the names)");
        exit(255);
    };
    let rest = &args[2..];
    if name == "list" || name == "--help" || name == "-h" {
        for p in PROBES {
            println!("{p}");
        }
        exit(0);
    }
    match run(name, rest) {
        Ok(()) => {
            println!("{name}: ok");
            exit(0);
        }
        Err(Fail::Errno(e, step)) => {
            println!("{name}: {} ({step})", errno_name(e));
            exit(e.clamp(1, 254));
        }
        Err(Fail::Usage(msg)) => {
            eprintln!("probe {name}: {msg}");
            eprintln!("usage: probe NAME [ARGS...]; names:");
            for p in PROBES {
                eprintln!("  {p}");
            }
            exit(255);
        }
    }
}

fn run(name: &str, a: &[String]) -> Res {
    let want = |n: usize| -> Res {
        if a.len() == n {
            Ok(())
        } else {
            Err(usage(&format!("takes {n} argument(s), got {}", a.len())))
        }
    };
    match name {
        "mknod-read" | "mknod-write" => {
            want(3)?;
            mknod_probe(&a[0], &a[1], &a[2], name == "mknod-write")
        }
        "open-read" => {
            want(1)?;
            open_io(&a[0], false)
        }
        "open-write" => {
            want(1)?;
            open_io(&a[0], true)
        }
        "write-same" => {
            want(1)?;
            write_same(&a[0])
        }
        "sysfs-write" => {
            want(0)?;
            write_same("/sys/kernel/mm/transparent_hugepage/enabled")
        }
        "cgroup-write" => {
            want(0)?;
            cgroup_write()
        }
        "mount" => {
            want(0)?;
            mount_probe()
        }
        "umount" => {
            want(1)?;
            umount_probe(&a[0])
        }
        "pivot-root" => {
            want(0)?;
            pivot_root_probe()
        }
        "chroot-breakout" => {
            want(0)?;
            chroot_breakout()
        }
        "userns" => {
            want(0)?;
            // SAFETY: unshare takes no pointers.
            unsafe { sys(SYS_UNSHARE, &[CLONE_NEWUSER]) }.map_err(|e| refused(e, "unshare"))?;
            Ok(())
        }
        "userns-mount" => {
            want(0)?;
            userns_mount()
        }
        "userns-release-agent" => {
            want(0)?;
            userns_release_agent()
        }
        "fsopen" => {
            want(0)?;
            let fs = cstr("tmpfs")?;
            // SAFETY: `fs` is a NUL-terminated string that outlives the call.
            let fd = unsafe { sys(SYS_FSOPEN, &[p(&fs), 0]) }.map_err(|e| refused(e, "fsopen"))?;
            drop(own_fd(fd));
            Ok(())
        }
        "keyctl" => {
            want(0)?;
            // SAFETY: a NULL name asks for a new anonymous session keyring; no other pointers.
            unsafe { sys(SYS_KEYCTL, &[KEYCTL_JOIN_SESSION_KEYRING, 0]) }
                .map_err(|e| refused(e, "keyctl"))?;
            Ok(())
        }
        "add-key" => {
            want(0)?;
            add_key()
        }
        "bpf" => {
            want(0)?;
            bpf_probe()
        }
        "perf-event-open" => {
            want(0)?;
            perf_probe()
        }
        "userfaultfd" => {
            want(0)?;
            // SAFETY: userfaultfd takes only flags.
            let fd = unsafe { sys(SYS_USERFAULTFD, &[O_CLOEXEC]) }
                .map_err(|e| refused(e, "userfaultfd"))?;
            drop(own_fd(fd));
            Ok(())
        }
        "io-uring" => {
            want(0)?;
            // struct io_uring_params is 120 bytes; all zero asks for the defaults.
            let mut params = [0u64; 15];
            // SAFETY: `params` is a writable 120-byte io_uring_params that outlives the call.
            let fd = unsafe { sys(SYS_IO_URING_SETUP, &[1, params.as_mut_ptr() as c_long]) }
                .map_err(|e| refused(e, "io_uring_setup"))?;
            drop(own_fd(fd));
            Ok(())
        }
        "open-by-handle" => {
            if a.len() > 1 {
                return Err(usage("takes at most 1 argument"));
            }
            open_by_handle(a.first().map(String::as_str).unwrap_or("/"))
        }
        "kexec-load" => {
            want(0)?;
            kexec_probe()
        }
        "init-module" => {
            want(0)?;
            let empty = cstr("")?;
            // SAFETY: a NULL image of length 0 is never read; `empty` outlives the call.
            match unsafe { sys(SYS_INIT_MODULE, &[0, 0, p(&empty)]) } {
                Ok(_) => Ok(()),
                Err(ENOEXEC) => {
                    note("ENOEXEC for the empty image: the permission checks passed");
                    Ok(())
                }
                Err(e) => Err(refused(e, "init_module")),
            }
        }
        "reboot" => {
            want(0)?;
            // SAFETY: reboot with a wrong second magic number takes no pointer and does nothing.
            match unsafe { sys(SYS_REBOOT, &[LINUX_REBOOT_MAGIC1, 0, 0, 0]) } {
                Ok(_) => Ok(()),
                Err(EINVAL) => {
                    note("EINVAL for the wrong magic number: the CAP_SYS_BOOT check passed");
                    Ok(())
                }
                Err(e) => Err(refused(e, "reboot")),
            }
        }
        "ioperm" => {
            want(0)?;
            // SAFETY: ioperm takes no pointers; port 0x80 is the POST diagnostic port and the
            // permission is dropped again right away.
            unsafe { sys(SYS_IOPERM, &[0x80, 1, 1]) }.map_err(|e| refused(e, "ioperm"))?;
            // SAFETY: as above, turning the permission off.
            let _ = unsafe { sys(SYS_IOPERM, &[0x80, 1, 0]) };
            Ok(())
        }
        "settimeofday" => {
            want(0)?;
            let mut tv = [0i64; 2];
            // SAFETY: `tv` is a writable struct timeval; the timezone pointer is NULL.
            unsafe { sys(SYS_GETTIMEOFDAY, &[tv.as_mut_ptr() as c_long, 0]) }
                .map_err(|e| refused(e, "gettimeofday"))?;
            // SAFETY: `tv` is a valid struct timeval holding the time just read.
            unsafe { sys(SYS_SETTIMEOFDAY, &[tv.as_ptr() as c_long, 0]) }
                .map_err(|e| refused(e, "settimeofday"))?;
            Ok(())
        }
        "ptrace" => {
            want(1)?;
            let pid: c_long = a[0].parse().map_err(|_| usage("PID must be a number"))?;
            ptrace_probe(pid)
        }
        "kmsg" => {
            want(0)?;
            kmsg_probe()
        }
        "proc-root" => {
            want(0)?;
            proc_root()
        }
        "proc-exe" => {
            want(0)?;
            proc_exe()
        }
        "inherited-fds" => {
            want(0)?;
            inherited_fds()
        }
        _ => Err(usage("unknown probe")),
    }
}

/// Removes a path, ignoring every error (it usually does not exist).
fn unlink_quiet(path: &str) {
    let _ = fs::remove_file(path);
}

fn mknod(path: &str, mode: c_long, major: u32, minor: u32) -> Result<(), i32> {
    // The kernel's 32-bit device encoding (new_encode_dev): major < 4096, minor < 2^20.
    let dev = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
    let c = CString::new(path).map_err(|_| EINVAL)?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    unsafe { sys(SYS_MKNODAT, &[AT_FDCWD, p(&c), mode, dev as c_long]) }.map(|_| ())
}

fn mknod_probe(path: &str, major: &str, minor: &str, write: bool) -> Res {
    let major: u32 = major.parse().map_err(|_| usage("MAJOR must be a number"))?;
    let minor: u32 = minor.parse().map_err(|_| usage("MINOR must be a number"))?;
    if major > 0xfff || minor > 0xf_ffff {
        return Err(usage("MAJOR must be < 4096 and MINOR < 1048576"));
    }
    unlink_quiet(path);
    mknod(path, S_IFBLK | 0o600, major, minor).map_err(|e| refused(e, "mknod"))?;
    let r = open_io(path, write);
    unlink_quiet(path);
    r
}

/// Opens `path` and reads 1 byte, or writes 1 byte 'X' at offset 100.
fn open_io(path: &str, write: bool) -> Res {
    if write {
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| io_err(&e, "open"))?;
        f.write_at(b"X", 100).map_err(|e| io_err(&e, "write"))?;
    } else {
        let mut f = File::open(path).map_err(|e| io_err(&e, "open"))?;
        let mut b = [0u8; 1];
        let n = f.read(&mut b).map_err(|e| io_err(&e, "read"))?;
        if n == 0 {
            note(&format!(
                "{path}: read returned 0 bytes (EOF; masked by /dev/null?)"
            ));
        }
    }
    Ok(())
}

/// Reads a kernel setting and writes the same value back.
fn write_same(path: &str) -> Res {
    let data: Vec<u8> = match fs::read(path) {
        Ok(mut d) => {
            if path.starts_with("/sys/kernel/mm/transparent_hugepage/") {
                // "always [madvise] never": the selected word is the one in brackets.
                let s = String::from_utf8_lossy(&d).to_string();
                match (s.find('['), s.find(']')) {
                    (Some(i), Some(j)) if i < j => d = s.as_bytes()[i + 1..j].to_vec(),
                    _ => return Err(refused(EINVAL, "parse")),
                }
            }
            d
        }
        // Write-only files: a harmless value instead.
        Err(_) if path.ends_with("/sysrq-trigger") => b"h".to_vec(),
        Err(_) if path.ends_with("/drop_caches") => b"1".to_vec(),
        Err(e) => return Err(io_err(&e, "read")),
    };
    note(&format!(
        "writing {:?} to {path}",
        String::from_utf8_lossy(&data)
    ));
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io_err(&e, "open"))?;
    f.write_all(&data).map_err(|e| io_err(&e, "write"))?;
    Ok(())
}

/// The f_type statfs() reports for `path`.
fn fs_type(path: &str) -> Result<i64, i32> {
    let c = CString::new(path).map_err(|_| EINVAL)?;
    // struct statfs is 120 bytes on x86_64; f_type is its first field.
    let mut buf = [0i64; 16];
    // SAFETY: `c` is a NUL-terminated path and `buf` a writable buffer larger than struct
    // statfs, both outliving the call.
    unsafe { sys(SYS_STATFS, &[p(&c), buf.as_mut_ptr() as c_long]) }?;
    Ok(buf[0])
}

/// Creates (and removes) a cgroup: under /sys/fs/cgroup when that is a cgroup file system
/// (v2, or v1 with a cgroup namespace), else under each v1 hierarchy below it. A directory in a
/// tmpfs that is not a cgroup file system does not count.
fn cgroup_write() -> Res {
    let base = "/sys/fs/cgroup";
    let is_cgroup = |t: i64| t == CGROUP_SUPER_MAGIC || t == CGROUP2_SUPER_MAGIC;
    let mut dirs = Vec::new();
    match fs_type(base) {
        Ok(t) if is_cgroup(t) => dirs.push(base.to_string()),
        Ok(t) => {
            note(&format!(
                "{base} is not a cgroup file system (f_type {t:#x}): trying below it"
            ));
            let mut subs: Vec<String> = fs::read_dir(base)
                .map_err(|e| io_err(&e, "opendir"))?
                .flatten()
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| e.path().to_string_lossy().into_owned())
                .filter(|d| fs_type(d).map(is_cgroup).unwrap_or(false))
                .collect();
            subs.sort();
            dirs.extend(subs);
        }
        Err(e) => return Err(refused(e, "statfs")),
    }
    if dirs.is_empty() {
        return Err(refused(ENOENT, "no cgroup file system"));
    }
    let mut first = None;
    for d in &dirs {
        let dir = format!("{d}/berth-probe-{}", std::process::id());
        match fs::create_dir(&dir) {
            Ok(()) => {
                let _ = fs::remove_dir(&dir);
                note(&format!("created (and removed) the cgroup {dir}"));
                return Ok(());
            }
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(EIO);
                note(&format!("mkdir {dir}: {}", errno_name(errno)));
                first.get_or_insert(errno);
            }
        }
    }
    Err(refused(first.unwrap_or(EPERM), "mkdir"))
}

fn mount_tmpfs(target: &str) -> Result<(), i32> {
    let (src, tgt, ty) = (
        CString::new("none").map_err(|_| EINVAL)?,
        CString::new(target).map_err(|_| EINVAL)?,
        CString::new("tmpfs").map_err(|_| EINVAL)?,
    );
    // SAFETY: three NUL-terminated strings that outlive the call; data is NULL.
    unsafe { sys(SYS_MOUNT, &[p(&src), p(&tgt), p(&ty), 0, 0]) }.map(|_| ())
}

fn umount2(target: &str, flags: c_long) -> Result<(), i32> {
    let c = CString::new(target).map_err(|_| EINVAL)?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    unsafe { sys(SYS_UMOUNT2, &[p(&c), flags]) }.map(|_| ())
}

fn chdir(path: &str) -> Result<(), i32> {
    let c = CString::new(path).map_err(|_| EINVAL)?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    unsafe { sys(SYS_CHDIR, &[p(&c)]) }.map(|_| ())
}

fn chroot(path: &str) -> Result<(), i32> {
    let c = CString::new(path).map_err(|_| EINVAL)?;
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    unsafe { sys(SYS_CHROOT, &[p(&c)]) }.map(|_| ())
}

fn mount_probe() -> Res {
    fs::create_dir_all("/mnt").map_err(|e| io_err(&e, "mkdir"))?;
    mount_tmpfs("/mnt").map_err(|e| refused(e, "mount"))?;
    let _ = umount2("/mnt", 0);
    Ok(())
}

fn umount_probe(path: &str) -> Res {
    umount2(path, MNT_DETACH).map_err(|e| refused(e, "umount"))
}

fn pivot_root_probe() -> Res {
    chdir("/").map_err(|e| refused(e, "chdir"))?;
    let dot = cstr(".")?;
    // SAFETY: `dot` is a NUL-terminated path that outlives the call.
    unsafe { sys(SYS_PIVOT_ROOT, &[p(&dot), p(&dot)]) }.map_err(|e| refused(e, "pivot_root"))?;
    Ok(())
}

fn dev_ino(path: &str) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn fmt_dev(dev: u64) -> String {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
    format!("{major}:{minor}")
}

/// The classic chroot escape: chroot into a subdirectory while keeping a descriptor (here: the
/// cwd) outside it, climb "..", chroot("."). A runtime that only chroot()s is escaped; one that
/// pivot_root()s into its own mount namespace is not (".." stops at the namespace's root).
fn chroot_breakout() -> Res {
    let root = dev_ino("/").ok_or_else(|| refused(last_errno(), "stat"))?;
    let base = if fs::metadata("/tmp").map(|m| m.is_dir()).unwrap_or(false) {
        "tmp/"
    } else {
        ""
    };
    let rel = format!("{base}berth-probe-chroot-{}", std::process::id());
    chdir("/").map_err(|e| refused(e, "chdir"))?;
    fs::create_dir(&rel).map_err(|e| io_err(&e, "mkdir"))?;
    let r = chroot(&rel);
    let _ = fs::remove_dir(&rel); // cwd is still the old root, so the relative path works
    r.map_err(|e| refused(e, "chroot"))?;
    for _ in 0..256 {
        let _ = chdir("..");
    }
    chroot(".").map_err(|e| refused(e, "chroot ."))?;
    let now = dev_ino("/").ok_or_else(|| refused(last_errno(), "stat"))?;
    if now == root {
        return Err(refused(EPERM, "stayed inside"));
    }
    note(&format!(
        "escaped: / is now dev {} ino {} (was dev {} ino {})",
        fmt_dev(now.0),
        now.1,
        fmt_dev(root.0),
        root.1
    ));
    if let Ok(rd) = fs::read_dir("/") {
        let names: Vec<String> = rd
            .flatten()
            .take(20)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        note(&format!("/ now holds: {}", names.join(" ")));
    }
    Ok(())
}

fn unshare(flags: c_long) -> Result<(), i32> {
    // SAFETY: unshare takes no pointers.
    unsafe { sys(SYS_UNSHARE, &[flags]) }.map(|_| ())
}

/// Maps our uid and gid to 0 in the user namespace we just created.
fn map_root(uid: c_long, gid: c_long) -> Res {
    let w = |path: &str, s: String| -> Res {
        let mut f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| io_err(&e, path))?;
        f.write_all(s.as_bytes()).map_err(|e| io_err(&e, path))
    };
    w("/proc/self/setgroups", "deny".into())?;
    w("/proc/self/uid_map", format!("0 {uid} 1"))?;
    w("/proc/self/gid_map", format!("0 {gid} 1"))
}

fn ids() -> (c_long, c_long) {
    // SAFETY: getuid and getgid take no arguments and cannot fail.
    unsafe {
        (
            sys(SYS_GETUID, &[]).unwrap_or(0),
            sys(SYS_GETGID, &[]).unwrap_or(0),
        )
    }
}

fn userns_mount() -> Res {
    let (uid, gid) = ids();
    unshare(CLONE_NEWUSER | CLONE_NEWNS).map_err(|e| refused(e, "unshare"))?;
    if let Err(Fail::Errno(e, step)) = map_root(uid, gid) {
        note(&format!("{step}: {} (continuing unmapped)", errno_name(e)));
    }
    mount_tmpfs("/tmp").map_err(|e| refused(e, "mount"))?;
    let _ = umount2("/tmp", MNT_DETACH);
    Ok(())
}

/// CVE-2022-0492: in new user+mount+cgroup namespaces, mount a cgroup v1 hierarchy and write its
/// release_agent (run by the kernel as root in the initial namespaces). Fixed kernels require
/// CAP_SYS_ADMIN in the initial user namespace for the write. The old value is put back.
fn userns_release_agent() -> Res {
    let (uid, gid) = ids();
    unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWCGROUP).map_err(|e| refused(e, "unshare"))?;
    map_root(uid, gid)?;
    let dir = format!("/tmp/berth-probe-cg-{}", std::process::id());
    fs::create_dir_all(&dir).map_err(|e| io_err(&e, "mkdir"))?;
    let r = release_agent_in(&dir);
    let _ = umount2(&dir, MNT_DETACH);
    let _ = fs::remove_dir(&dir);
    r
}

fn release_agent_in(dir: &str) -> Res {
    let (src, tgt, ty) = (cstr("cgroup")?, cstr(dir)?, cstr("cgroup")?);
    let agent = format!("{dir}/release_agent");
    let mut last = refused(EPERM, "mount");
    // rdma first, as the exploits do (a container is usually in the root rdma cgroup, so the
    // mount shows the hierarchy's root with its release_agent); then memory as asked, a few
    // other controllers, and last a new named hierarchy without controllers (which a user
    // namespace may create).
    let candidates = [
        "rdma",
        "memory",
        "misc",
        "perf_event",
        "hugetlb",
        "net_cls",
        "none,name=berth-probe",
    ];
    for opts in candidates {
        let o = cstr(opts)?;
        // SAFETY: four NUL-terminated strings that outlive the call.
        if let Err(e) = unsafe { sys(SYS_MOUNT, &[p(&src), p(&tgt), p(&ty), 0, p(&o)]) } {
            note(&format!("mount -t cgroup -o {opts}: {}", errno_name(e)));
            if !matches!(last, Fail::Errno(_, ref s) if s == "open") {
                last = refused(e, "mount");
            }
            continue;
        }
        if fs::symlink_metadata(&agent).is_err() {
            // Mounted, but we are not in its root cgroup: no release_agent here.
            note(&format!(
                "mount -t cgroup -o {opts}: ok, but no release_agent (not the root)"
            ));
            last = refused(ENOENT, "open");
            let _ = umount2(dir, MNT_DETACH);
            continue;
        }
        let old = fs::read(&agent).unwrap_or_default();
        note(&format!(
            "mounted cgroup v1 -o {opts}; release_agent was {:?}",
            String::from_utf8_lossy(&old)
        ));
        let mut f = OpenOptions::new()
            .write(true)
            .open(&agent)
            .map_err(|e| io_err(&e, "open"))?;
        f.write_all(b"/bin/true").map_err(|e| io_err(&e, "write"))?;
        // Put the old value back (a lone newline clears it).
        let restore: &[u8] = if old.is_empty() { b"\n" } else { &old };
        if let Err(e) = OpenOptions::new()
            .write(true)
            .open(&agent)
            .and_then(|mut f| f.write_all(restore))
        {
            note(&format!("could not restore release_agent: {e}"));
        }
        return Ok(());
    }
    Err(last)
}

fn add_key() -> Res {
    let (ty, desc) = (cstr("user")?, cstr("berth-probe")?);
    let payload = b"x";
    // SAFETY: two NUL-terminated strings and a 1-byte payload that outlive the call; the key
    // goes to the process keyring and dies with the process.
    unsafe {
        sys(
            SYS_ADD_KEY,
            &[
                p(&ty),
                p(&desc),
                payload.as_ptr() as c_long,
                1,
                KEY_SPEC_PROCESS_KEYRING,
            ],
        )
    }
    .map_err(|e| refused(e, "add_key"))?;
    Ok(())
}

fn bpf_probe() -> Res {
    // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries, rest 0.
    let mut attr = [0u32; 32];
    attr[0] = BPF_MAP_TYPE_ARRAY;
    attr[1] = 4;
    attr[2] = 4;
    attr[3] = 1;
    let size = std::mem::size_of_val(&attr) as c_long;
    // SAFETY: `attr` is a 128-byte, zero-padded bpf_attr that outlives the call.
    let fd = unsafe { sys(SYS_BPF, &[BPF_MAP_CREATE, attr.as_ptr() as c_long, size]) }
        .map_err(|e| refused(e, "bpf"))?;
    drop(own_fd(fd));
    Ok(())
}

fn perf_probe() -> Res {
    // struct perf_event_attr (VER0, 64 bytes): type, size, config = PERF_COUNT_SW_CPU_CLOCK (0),
    // flags: disabled | exclude_kernel | exclude_hv.
    let mut attr = [0u64; 16];
    attr[0] = PERF_TYPE_SOFTWARE | (PERF_ATTR_SIZE_VER0 << 32);
    attr[5] = 1 | (1 << 5) | (1 << 6);
    // SAFETY: `attr` is a zero-padded perf_event_attr that outlives the call.
    let fd = unsafe {
        sys(
            SYS_PERF_EVENT_OPEN,
            &[attr.as_ptr() as c_long, 0, -1, -1, 0],
        )
    }
    .map_err(|e| refused(e, "perf_event_open"))?;
    drop(own_fd(fd));
    Ok(())
}

/// "Shocker": open_by_handle_at() with a guessed handle (inode 2, the root directory of an
/// ext4/xfs file system) relative to a descriptor on a mount that comes from the host.
fn open_by_handle(mount_path: &str) -> Res {
    let m = File::open(mount_path).map_err(|e| io_err(&e, "open"))?;
    // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[8] = {ino, gen} }.
    let handle: [u32; 4] = [8, FILEID_INO32_GEN, 2, 0];
    let mfd = std::os::fd::AsRawFd::as_raw_fd(&m) as c_long;
    // SAFETY: `handle` is a valid 16-byte file_handle that outlives the call.
    let fd = unsafe {
        sys(
            SYS_OPEN_BY_HANDLE_AT,
            &[mfd, handle.as_ptr() as c_long, O_RDONLY],
        )
    }
    .map_err(|e| refused(e, "open_by_handle_at"))?;
    let fd = own_fd(fd);
    let f = File::from(fd);
    if let Ok(md) = f.metadata() {
        note(&format!(
            "opened dev {} ino {} mode {:o}",
            fmt_dev(md.dev()),
            md.ino(),
            md.mode()
        ));
    }
    let link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f));
    if let Ok(t) = fs::read_link(&link) {
        note(&format!("it is {}", t.display()));
    }
    if let Ok(rd) = fs::read_dir(&link) {
        let names: Vec<String> = rd
            .flatten()
            .take(20)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        note(&format!("it holds: {}", names.join(" ")));
    }
    Ok(())
}

fn kexec_probe() -> Res {
    let loaded = fs::read_to_string("/sys/kernel/kexec_loaded")
        .map(|s| s.trim() == "1")
        .unwrap_or(false);
    if loaded {
        // Do not unload the image someone loaded: ask for a foreign architecture instead, which
        // the kernel refuses with EINVAL only after its permission checks.
        // SAFETY: no segments, NULL segment pointer.
        return match unsafe { sys(SYS_KEXEC_LOAD, &[0, 0, 0, KEXEC_ARCH_ARM]) } {
            Ok(_) => Ok(()),
            Err(EINVAL) => {
                note("EINVAL for a foreign architecture: the permission checks passed");
                Ok(())
            }
            Err(e) => Err(refused(e, "kexec_load")),
        };
    }
    // SAFETY: zero segments and a NULL segment pointer (unloads the absent kexec image).
    unsafe { sys(SYS_KEXEC_LOAD, &[0, 0, 0, 0]) }.map_err(|e| refused(e, "kexec_load"))?;
    Ok(())
}

fn ptrace_probe(pid: c_long) -> Res {
    // SAFETY: PTRACE_ATTACH takes no pointers.
    unsafe { sys(SYS_PTRACE, &[PTRACE_ATTACH, pid, 0, 0]) }.map_err(|e| refused(e, "attach"))?;
    let mut status = 0i32;
    // SAFETY: `status` is a writable int; rusage is NULL.
    let _ = unsafe {
        sys(
            SYS_WAIT4,
            &[pid, &mut status as *mut i32 as c_long, WALL, 0],
        )
    };
    // SAFETY: PTRACE_DETACH with signal 0 takes no pointers.
    let _ = unsafe { sys(SYS_PTRACE, &[PTRACE_DETACH, pid, 0, 0]) };
    note(&format!("attached to pid {pid} and detached"));
    Ok(())
}

fn kmsg_probe() -> Res {
    let path = "/dev/kmsg";
    let mut created = false;
    match fs::symlink_metadata(path) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(ENOENT) => {
            mknod(path, S_IFCHR | 0o600, 1, 11).map_err(|e| refused(e, "mknod"))?;
            created = true;
        }
        Err(e) => return Err(io_err(&e, "stat")),
    }
    let r = (|| {
        let mut f = OpenOptions::new()
            .read(true)
            .custom_flags(O_NONBLOCK)
            .open(path)
            .map_err(|e| io_err(&e, "open"))?;
        // A record must fit the buffer, or read fails with EINVAL.
        let mut buf = vec![0u8; 8192];
        let n = f.read(&mut buf).map_err(|e| io_err(&e, "read"))?;
        let line = String::from_utf8_lossy(&buf[..n]);
        note(&format!(
            "first record: {}",
            line.lines().next().unwrap_or("").trim()
        ));
        Ok(())
    })();
    if created {
        unlink_quiet(path);
    }
    r
}

fn pids() -> Vec<u32> {
    let mut v: Vec<u32> = fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// Whether the magic link `link` (a /proc/PID/{root,cwd} or /proc/self/fd/N) points at
/// something reachable from our own root: its target path, looked up from here, must be the
/// same inode. `Err` carries a description when it is not.
fn inside(link: &str, target: (u64, u64)) -> Result<String, String> {
    let t = fs::read_link(link).map_err(|e| format!("readlink: {e}"))?;
    let s = t.to_string_lossy().into_owned();
    if !s.starts_with('/') {
        return Err(format!("-> {s:?} (not a path)"));
    }
    match dev_ino(&s) {
        Some(d) if d == target => Ok(s),
        Some(d) => Err(format!(
            "-> {s} is dev {} ino {} here, but the link is dev {} ino {}",
            fmt_dev(d.0),
            d.1,
            fmt_dev(target.0),
            target.1
        )),
        None => Err(format!(
            "-> {s} (dev {} ino {}) does not exist from our root",
            fmt_dev(target.0),
            target.1
        )),
    }
}

fn proc_root() -> Res {
    let me = std::process::id();
    let root = dev_ino("/").ok_or_else(|| refused(last_errno(), "stat /"))?;
    let mut found = Vec::new();
    let (mut checked, mut denied) = (0, BTreeMap::<String, u32>::new());
    for pid in pids().into_iter().filter(|&p| p != me) {
        for what in ["root", "cwd"] {
            let link = format!("/proc/{pid}/{what}");
            let md = match fs::metadata(&link) {
                Ok(m) => m,
                Err(e) => {
                    if e.raw_os_error() != Some(ENOENT) {
                        let n = errno_name(e.raw_os_error().unwrap_or(EIO));
                        *denied.entry(n).or_default() += 1;
                    }
                    continue;
                }
            };
            checked += 1;
            let t = (md.dev(), md.ino());
            if what == "root" && t == root {
                continue;
            }
            match inside(&link, t) {
                Ok(_) => {}
                Err(why) if why.contains(" (deleted)") => {
                    note(&format!("pid {pid} {what} {why} (deleted; ignored)"))
                }
                Err(why) => found.push(format!("pid {pid} {what} {why}")),
            }
        }
    }
    let denied: Vec<String> = denied.iter().map(|(k, v)| format!("{k} x{v}")).collect();
    note(&format!(
        "checked {checked} links; refused: [{}]",
        denied.join(", ")
    ));
    if found.is_empty() {
        return Err(refused(EPERM, "nothing outside"));
    }
    for f in &found {
        note(f);
    }
    Ok(())
}

/// CVE-2019-5736: the host's runc binary was reachable as /proc/PID/exe of a process entering
/// the container, and writable. Opens for writing only (never O_TRUNC, never writes).
fn proc_exe() -> Res {
    let mut pids: Vec<String> = pids().into_iter().map(|p| p.to_string()).collect();
    pids.push("self".into());
    let mut seen = BTreeMap::<String, u32>::new();
    let mut found = Vec::new();
    for pid in pids {
        let link = format!("/proc/{pid}/exe");
        match OpenOptions::new().write(true).open(&link) {
            Ok(_) => found.push(format!(
                "pid {pid}: {link} is writable ({})",
                fs::read_link(&link)
                    .map(|t| t.display().to_string())
                    .unwrap_or_default()
            )),
            Err(e) if e.raw_os_error() == Some(ENOENT) => {}
            Err(e) => {
                *seen
                    .entry(errno_name(e.raw_os_error().unwrap_or(EIO)))
                    .or_default() += 1
            }
        }
    }
    let seen: Vec<String> = seen.iter().map(|(k, v)| format!("{k} x{v}")).collect();
    note(&format!("refusals: [{}]", seen.join(", ")));
    if found.is_empty() {
        return Err(refused(EPERM, "nothing writable"));
    }
    for f in &found {
        note(f);
    }
    Ok(())
}

/// CVE-2024-21626: a descriptor (or the cwd) that the runtime leaked into the container and that
/// points outside its root.
fn inherited_fds() -> Res {
    // Collect first: the directory's own descriptor is closed (and then skipped) afterwards.
    let fds: Vec<i32> = fs::read_dir("/proc/self/fd")
        .map_err(|e| io_err(&e, "opendir"))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    let mut found = Vec::new();
    for fd in fds {
        let link = format!("/proc/self/fd/{fd}");
        let Ok(target) = fs::read_link(&link) else {
            continue;
        };
        let t = target.to_string_lossy().into_owned();
        if fd <= 2 {
            note(&format!("fd {fd} -> {t}"));
            continue;
        }
        let Ok(md) = fs::metadata(&link) else {
            continue;
        };
        let kind = if md.is_dir() {
            "directory"
        } else if md.is_file() {
            "file"
        } else if md.file_type().is_block_device() {
            "block device"
        } else if md.file_type().is_char_device() {
            "char device"
        } else {
            "other"
        };
        note(&format!(
            "fd {fd} -> {t} ({kind}, dev {} ino {})",
            fmt_dev(md.dev()),
            md.ino()
        ));
        let special = ["pipe:", "socket:", "anon_inode:"]
            .iter()
            .any(|s| t.starts_with(s));
        if special {
            continue;
        }
        if t.starts_with("/memfd:") || t.ends_with(" (deleted)") {
            continue;
        }
        if let Err(why) = inside(&link, (md.dev(), md.ino())) {
            found.push(format!("fd {fd} ({kind}) {why}"));
        }
    }
    // The cwd must be reachable from our root too.
    match fs::metadata(".") {
        Ok(md) => {
            if let Err(why) = inside("/proc/self/cwd", (md.dev(), md.ino())) {
                found.push(format!("cwd {why}"));
            }
            if let Err(e) = std::env::current_dir() {
                found.push(format!("cwd: getcwd fails ({e}): it is not under our root"));
            }
        }
        Err(e) => note(&format!("cwd: stat . failed: {e}")),
    }
    if found.is_empty() {
        return Err(refused(EPERM, "nothing outside"));
    }
    for f in &found {
        note(f);
    }
    Ok(())
}
