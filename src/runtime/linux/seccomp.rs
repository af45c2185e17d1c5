//! The default seccomp filter: Docker's default profile (moby profiles/seccomp/default.json,
//! summarised in docs/runtime-notes.md §3), as one classic BPF program.
//!
//! Compiled once per capability set by berth, then handed to each container's setup as raw
//! BPF: the start path does not compile filters (crun's lesson). Anything not allowed fails
//! with EPERM; `clone3` answers ENOSYS (its flags live in memory seccomp cannot read), so that
//! libc falls back to `clone`, whose flags the filter inspects.
//!
//! The program is a binary search over ranges of syscall numbers, not a chain of one test per
//! syscall (what seccompiler emits). The kernel runs a new filter once for every syscall number
//! when it is attached, to learn which ones it may allow without running it again (the action
//! cache, 5.11+): a chain of 1500 instructions made that 0.86 ms of every container's start
//! (`examples`-free measurement in the start benchmark's breakdown); the tree, of about 200
//! instructions with a depth of 7, makes it a few microseconds, and every syscall the service
//! makes that the cache cannot answer costs 7 tests instead of up to 350.

use std::collections::BTreeMap;

use caps::{Capability, CapsHashSet};

use super::error::SetupError;

macro_rules! syscalls {
    ($($name:ident)*) => { &[$(libc::$name),*] };
}

/// Allowed unconditionally (x86_64 names; Docker's big allow group).
#[cfg(target_arch = "x86_64")]
const ALLOWED: &[libc::c_long] = syscalls! {
    SYS_accept SYS_accept4 SYS_access SYS_adjtimex SYS_alarm SYS_bind SYS_brk SYS_capget
    SYS_capset SYS_chdir SYS_chmod SYS_chown SYS_clock_adjtime SYS_clock_getres SYS_clock_gettime
    SYS_clock_nanosleep SYS_close SYS_close_range SYS_connect SYS_copy_file_range SYS_creat SYS_dup
    SYS_dup2 SYS_dup3 SYS_epoll_create SYS_epoll_create1 SYS_epoll_ctl SYS_epoll_ctl_old
    SYS_epoll_pwait SYS_epoll_pwait2 SYS_epoll_wait SYS_epoll_wait_old SYS_eventfd SYS_eventfd2
    SYS_execve SYS_execveat SYS_exit SYS_exit_group SYS_faccessat SYS_faccessat2 SYS_fadvise64
    SYS_fallocate SYS_fanotify_mark SYS_fchdir SYS_fchmod SYS_fchmodat SYS_fchown SYS_fchownat
    SYS_fcntl SYS_fdatasync SYS_fgetxattr SYS_flistxattr SYS_flock SYS_fork SYS_fremovexattr
    SYS_fsetxattr SYS_fstat SYS_fstatfs SYS_fsync SYS_ftruncate SYS_futex SYS_futex_waitv
    SYS_futimesat SYS_get_robust_list SYS_get_thread_area SYS_getcpu SYS_getcwd SYS_getdents
    SYS_getdents64 SYS_getegid SYS_geteuid SYS_getgid SYS_getgroups SYS_getitimer SYS_getpeername
    SYS_getpgid SYS_getpgrp SYS_getpid SYS_getppid SYS_getpriority SYS_getrandom SYS_getresgid
    SYS_getresuid SYS_getrlimit SYS_getrusage SYS_getsid SYS_getsockname SYS_getsockopt SYS_gettid
    SYS_gettimeofday SYS_getuid SYS_getxattr SYS_inotify_add_watch SYS_inotify_init
    SYS_inotify_init1 SYS_inotify_rm_watch SYS_io_cancel SYS_io_destroy SYS_io_getevents
    SYS_io_setup SYS_io_submit SYS_ioctl SYS_ioprio_get SYS_ioprio_set SYS_kill
    SYS_landlock_add_rule SYS_landlock_create_ruleset SYS_landlock_restrict_self SYS_lchown
    SYS_lgetxattr SYS_link SYS_linkat SYS_listen SYS_listxattr SYS_llistxattr SYS_lremovexattr
    SYS_lseek SYS_lsetxattr SYS_lstat SYS_madvise SYS_membarrier SYS_memfd_create SYS_memfd_secret
    SYS_mincore SYS_mkdir SYS_mkdirat SYS_mknod SYS_mknodat SYS_mlock SYS_mlock2 SYS_mlockall
    SYS_mmap SYS_mprotect SYS_mq_getsetattr SYS_mq_notify SYS_mq_open SYS_mq_timedreceive
    SYS_mq_timedsend SYS_mq_unlink SYS_mremap SYS_msgctl SYS_msgget SYS_msgrcv SYS_msgsnd SYS_msync
    SYS_munlock SYS_munlockall SYS_munmap SYS_name_to_handle_at SYS_nanosleep SYS_newfstatat
    SYS_open SYS_openat SYS_openat2 SYS_pause SYS_pidfd_open SYS_pidfd_send_signal SYS_pipe
    SYS_pipe2 SYS_pkey_alloc SYS_pkey_free SYS_pkey_mprotect SYS_poll SYS_ppoll SYS_prctl
    SYS_pread64 SYS_preadv SYS_preadv2 SYS_prlimit64 SYS_process_mrelease SYS_pselect6
    SYS_pwrite64 SYS_pwritev SYS_pwritev2 SYS_read SYS_readahead SYS_readlink SYS_readlinkat
    SYS_readv SYS_recvfrom SYS_recvmmsg SYS_recvmsg SYS_remap_file_pages SYS_removexattr
    SYS_rename SYS_renameat SYS_renameat2 SYS_restart_syscall SYS_rmdir SYS_rseq SYS_rt_sigaction
    SYS_rt_sigpending SYS_rt_sigprocmask SYS_rt_sigqueueinfo SYS_rt_sigreturn SYS_rt_sigsuspend
    SYS_rt_sigtimedwait SYS_rt_tgsigqueueinfo SYS_sched_get_priority_max
    SYS_sched_get_priority_min SYS_sched_getaffinity SYS_sched_getattr SYS_sched_getparam
    SYS_sched_getscheduler SYS_sched_rr_get_interval SYS_sched_setaffinity SYS_sched_setattr
    SYS_sched_setparam SYS_sched_setscheduler SYS_sched_yield SYS_seccomp SYS_select SYS_semctl
    SYS_semget SYS_semop SYS_semtimedop SYS_sendfile SYS_sendmmsg SYS_sendmsg SYS_sendto
    SYS_set_robust_list SYS_set_thread_area SYS_set_tid_address SYS_setfsgid SYS_setfsuid
    SYS_setgid SYS_setgroups SYS_setitimer SYS_setpgid SYS_setpriority SYS_setregid SYS_setresgid
    SYS_setresuid SYS_setreuid SYS_setrlimit SYS_setsid SYS_setsockopt SYS_setuid SYS_setxattr
    SYS_shmat SYS_shmctl SYS_shmdt SYS_shmget SYS_shutdown SYS_sigaltstack SYS_signalfd
    SYS_signalfd4 SYS_socketpair SYS_splice SYS_stat SYS_statfs SYS_statx SYS_symlink
    SYS_symlinkat SYS_sync SYS_sync_file_range SYS_syncfs SYS_sysinfo SYS_tee SYS_tgkill SYS_time
    SYS_timer_create SYS_timer_delete SYS_timer_getoverrun SYS_timer_gettime SYS_timer_settime
    SYS_timerfd_create SYS_timerfd_gettime SYS_timerfd_settime SYS_times SYS_tkill SYS_truncate
    SYS_umask SYS_uname SYS_unlink SYS_unlinkat SYS_utime SYS_utimensat SYS_utimes SYS_vfork
    SYS_vmsplice SYS_wait4 SYS_waitid SYS_write SYS_writev
    SYS_arch_prctl SYS_modify_ldt SYS_ptrace SYS_process_vm_readv SYS_process_vm_writev
};

/// Syscalls allowed only when the container holds a capability.
#[cfg(target_arch = "x86_64")]
fn gated() -> Vec<(Capability, &'static [libc::c_long])> {
    vec![
        (
            Capability::CAP_SYS_ADMIN,
            syscalls! {
                SYS_bpf SYS_clone3 SYS_fanotify_init SYS_fsconfig SYS_fsmount SYS_fsopen SYS_fspick
                SYS_lookup_dcookie SYS_mount SYS_mount_setattr SYS_move_mount SYS_open_tree
                SYS_perf_event_open SYS_quotactl SYS_quotactl_fd SYS_setdomainname SYS_sethostname
                SYS_setns SYS_syslog SYS_umount2 SYS_unshare
            },
        ),
        (Capability::CAP_SYS_BOOT, syscalls! { SYS_reboot }),
        (Capability::CAP_SYS_CHROOT, syscalls! { SYS_chroot }),
        (
            Capability::CAP_SYS_MODULE,
            syscalls! { SYS_delete_module SYS_init_module SYS_finit_module },
        ),
        (Capability::CAP_SYS_PACCT, syscalls! { SYS_acct }),
        (
            Capability::CAP_SYS_PTRACE,
            syscalls! { SYS_kcmp SYS_pidfd_getfd SYS_process_madvise },
        ),
        (Capability::CAP_SYS_RAWIO, syscalls! { SYS_iopl SYS_ioperm }),
        (
            Capability::CAP_SYS_TIME,
            syscalls! { SYS_settimeofday SYS_clock_settime },
        ),
        (Capability::CAP_SYS_TTY_CONFIG, syscalls! { SYS_vhangup }),
        (
            Capability::CAP_SYS_NICE,
            syscalls! { SYS_get_mempolicy SYS_mbind SYS_set_mempolicy },
        ),
        (Capability::CAP_SYSLOG, syscalls! { SYS_syslog }),
        (Capability::CAP_BPF, syscalls! { SYS_bpf }),
        (Capability::CAP_PERFMON, syscalls! { SYS_perf_event_open }),
        (
            Capability::CAP_DAC_READ_SEARCH,
            syscalls! { SYS_open_by_handle_at },
        ),
    ]
}

/// Namespace flags `clone` may not carry without CAP_SYS_ADMIN.
const CLONE_NS_FLAGS: u64 = 0x7E02_0000;
const AF_VSOCK: u64 = 40;

/// A test of one 64-bit syscall argument: `(args[arg] & mask) == value` (or `!=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cond {
    arg: u8,
    mask: u64,
    value: u64,
    equal: bool,
}

impl Cond {
    fn eq(arg: u8, value: u64) -> Cond {
        Cond {
            arg,
            mask: u64::MAX,
            value,
            equal: true,
        }
    }

    /// What the program computes for these arguments (the unit tests' reference).
    #[cfg(test)]
    fn holds(&self, args: &[u64; 6]) -> bool {
        ((args[usize::from(self.arg)] & self.mask) == self.value) == self.equal
    }
}

/// What the filter answers for one syscall number.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Allow,
    Errno(u32),
    /// Allowed when every test of one of the rules holds, EPERM otherwise.
    Rules(Vec<Vec<Cond>>),
}

/// Errno answer for calls the profile does not allow.
const DENY: Action = Action::Errno(libc::EPERM as u32);

/// The default profile for a container holding `caps`: which syscall gets which answer.
fn default_table(caps: &CapsHashSet) -> BTreeMap<u32, Action> {
    let mut t: BTreeMap<u32, Action> = BTreeMap::new();
    let mut allow = |nr: libc::c_long| {
        t.insert(nr as u32, Action::Allow);
    };
    ALLOWED.iter().for_each(|nr| allow(*nr));
    for (cap, list) in gated() {
        if caps.contains(&cap) {
            list.iter().for_each(|nr| allow(*nr));
        }
    }
    // socket: every family but AF_VSOCK.
    t.insert(
        libc::SYS_socket as u32,
        Action::Rules(vec![vec![Cond {
            equal: false,
            ..Cond::eq(0, AF_VSOCK)
        }]]),
    );
    // personality: only the harmless personas.
    t.insert(
        libc::SYS_personality as u32,
        Action::Rules(
            [0u64, 0x8, 0x20000, 0x20008, 0xffff_ffff]
                .iter()
                .map(|v| vec![Cond::eq(0, *v)])
                .collect(),
        ),
    );
    if !caps.contains(&Capability::CAP_SYS_ADMIN) {
        // clone: no new namespaces without CAP_SYS_ADMIN; clone3 cannot be inspected.
        t.insert(
            libc::SYS_clone as u32,
            Action::Rules(vec![vec![Cond {
                mask: CLONE_NS_FLAGS,
                ..Cond::eq(0, 0)
            }]]),
        );
        t.insert(libc::SYS_clone3 as u32, Action::Errno(libc::ENOSYS as u32));
    } else {
        t.insert(libc::SYS_clone as u32, Action::Allow);
    }
    t
}

// Classic BPF opcodes and seccomp's return values (linux/filter.h, linux/seccomp.h).
const LD_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const JA: u16 = 0x05; // BPF_JMP | BPF_JA
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
/// Offsets in `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;
/// x32 syscalls are x86_64 numbers with this bit set: none is allowed.
const X32_BIT: u32 = 0x4000_0000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

fn op(code: u16, k: u32) -> Insn {
    Insn {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: usize, jf: usize) -> Result<Insn, SetupError> {
    let off = |o: usize| {
        u8::try_from(o).map_err(|_| SetupError::other("compile seccomp filter", "jump too long"))
    };
    Ok(Insn {
        code,
        jt: off(jt)?,
        jf: off(jf)?,
        k,
    })
}

fn ret(a: &Action) -> Insn {
    match a {
        Action::Errno(e) => op(RET_K, RET_ERRNO | (e & 0xffff)),
        _ => op(RET_K, RET_ALLOW),
    }
}

/// One argument test that falls through when it holds and jumps `fail` instructions past its
/// end when it does not.
fn cond_code(c: &Cond, fail: usize) -> Result<Vec<Insn>, SetupError> {
    let lo_off = OFF_ARGS + 8 * u32::from(c.arg);
    let (hi, lo) = ((c.value >> 32) as u32, c.value as u32);
    let (mhi, mlo) = ((c.mask >> 32) as u32, c.mask as u32);
    // Little-endian: the low word first. Six instructions either way.
    let mut v = vec![op(LD_ABS, lo_off + 4), op(AND_K, mhi)];
    if c.equal {
        // Both halves must match.
        v.push(jump(JEQ_K, hi, 0, fail + 3)?);
        v.extend([op(LD_ABS, lo_off), op(AND_K, mlo)]);
        v.push(jump(JEQ_K, lo, 0, fail)?);
    } else {
        // Holds as soon as either half differs.
        v.push(jump(JEQ_K, hi, 0, 3)?);
        v.extend([op(LD_ABS, lo_off), op(AND_K, mlo)]);
        v.push(jump(JEQ_K, lo, fail, 0)?);
    }
    Ok(v)
}

/// The code of one leaf of the search: the answer for a range of syscall numbers.
fn leaf(a: &Action) -> Result<Vec<Insn>, SetupError> {
    let Action::Rules(rules) = a else {
        return Ok(vec![ret(a)]);
    };
    let mut v = Vec::new();
    for rule in rules {
        // A failed test goes to the next rule: past the rest of this rule and its `ret`.
        let len = 6 * rule.len() + 1;
        for (i, c) in rule.iter().enumerate() {
            v.extend(cond_code(c, len - 6 * (i + 1))?);
        }
        v.push(op(RET_K, RET_ALLOW));
    }
    v.push(ret(&DENY));
    Ok(v)
}

/// Binary search over `ranges` (first syscall number of each range, its answer), which cover
/// every number from ranges[0].0 up. The accumulator holds the syscall number.
fn search(ranges: &[(u32, &Action)]) -> Result<Vec<Insn>, SetupError> {
    if ranges.len() == 1 {
        return leaf(ranges[0].1);
    }
    let mid = ranges.len() / 2;
    let left = search(&ranges[..mid])?;
    let right = search(&ranges[mid..])?;
    let mut v = Vec::with_capacity(left.len() + right.len() + 2);
    if left.len() <= usize::from(u8::MAX) {
        v.push(jump(JGE_K, ranges[mid].0, left.len(), 0)?);
    } else {
        // Too far for a conditional jump (8-bit offsets): through an unconditional one.
        v.push(jump(JGE_K, ranges[mid].0, 0, 1)?);
        let far = u32::try_from(left.len())
            .map_err(|_| SetupError::other("compile seccomp filter", "program too long"))?;
        v.push(op(JA, far));
    }
    v.extend(left);
    v.extend(right);
    Ok(v)
}

/// The whole program: the architecture check (another architecture's numbers mean other
/// calls: kill), x32 numbers refused, then the search.
fn program(table: &BTreeMap<u32, Action>) -> Result<Vec<Insn>, SetupError> {
    let mut ranges: Vec<(u32, &Action)> = Vec::new();
    let mut next = 0u32;
    for (nr, a) in table {
        if *nr > next && ranges.last().is_none_or(|r| *r.1 != DENY) {
            ranges.push((next, &DENY));
        }
        if ranges.last().is_none_or(|r| r.1 != a) {
            ranges.push((*nr, a));
        }
        next = nr + 1;
    }
    if ranges.last().is_none_or(|r| *r.1 != DENY) {
        ranges.push((next, &DENY));
    }
    let mut v = vec![
        op(LD_ABS, OFF_ARCH),
        jump(JEQ_K, AUDIT_ARCH, 1, 0)?,
        op(RET_K, RET_KILL_PROCESS),
        op(LD_ABS, OFF_NR),
    ];
    if cfg!(target_arch = "x86_64") {
        v.push(jump(JGE_K, X32_BIT, 0, 1)?);
        v.push(ret(&DENY));
    }
    v.extend(search(&ranges)?);
    if v.len() > 4096 {
        return Err(SetupError::other(
            "compile seccomp filter",
            "more than 4096 instructions",
        ));
    }
    Ok(v)
}

fn encode(prog: &[Insn]) -> Vec<u64> {
    prog.iter()
        .map(|i| {
            (u64::from(i.code) << 48)
                | (u64::from(i.jt) << 40)
                | (u64::from(i.jf) << 32)
                | u64::from(i.k)
        })
        .collect()
}

/// The default profile for a container holding `caps`, as BPF programs to install in order.
pub fn default_filters(caps: &CapsHashSet) -> Result<Vec<Vec<u64>>, SetupError> {
    Ok(vec![encode(&program(&default_table(caps))?)])
}

/// Installs the filters in the calling thread (the service process, just before exec).
/// With `no_new_privs` off this needs CAP_SYS_ADMIN, so it must run before the capability drop.
pub fn install(filters: &[Vec<u64>]) -> Result<(), SetupError> {
    for f in filters {
        let mut prog: Vec<libc::sock_filter> = f
            .iter()
            .map(|w| libc::sock_filter {
                code: (w >> 48) as u16,
                jt: (w >> 40) as u8,
                jf: (w >> 32) as u8,
                k: *w as u32,
            })
            .collect();
        let fprog = libc::sock_fprog {
            len: prog.len() as libc::c_ushort,
            filter: prog.as_mut_ptr(),
        };
        // SAFETY: seccomp(SECCOMP_SET_MODE_FILTER) reads the program through a pointer to a
        // sock_fprog that points at `prog`, both alive for the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &fprog as *const libc::sock_fprog,
            )
        };
        if r != 0 {
            return Err(SetupError::sys(
                "install seccomp filter",
                None,
                nix::errno::Errno::last(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(admin: bool) -> CapsHashSet {
        let mut set: CapsHashSet = super::super::security::DEFAULT_CAPS
            .iter()
            .copied()
            .collect();
        if admin {
            set.insert(Capability::CAP_SYS_ADMIN);
        }
        set
    }

    /// A classic BPF interpreter for what the generator emits (the kernel's semantics).
    fn run(prog: &[u64], arch: u32, nr: u32, args: &[u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let w = prog[pc];
            let (code, jt, jf, k) = ((w >> 48) as u16, (w >> 40) as u8, (w >> 32) as u8, w as u32);
            pc += 1;
            match code {
                LD_ABS => {
                    let o = k as usize;
                    acc = u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
                }
                AND_K => acc &= k,
                JA => pc += k as usize,
                JEQ_K => pc += usize::from(if acc == k { jt } else { jf }),
                JGE_K => pc += usize::from(if acc >= k { jt } else { jf }),
                RET_K => return k,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn expected(table: &BTreeMap<u32, Action>, nr: u32, args: &[u64; 6]) -> u32 {
        let a = if nr & X32_BIT != 0 {
            &DENY
        } else {
            table.get(&nr).unwrap_or(&DENY)
        };
        match a {
            Action::Rules(rules) => {
                if rules.iter().any(|r| r.iter().all(|c| c.holds(args))) {
                    RET_ALLOW
                } else {
                    RET_ERRNO | libc::EPERM as u32
                }
            }
            a => ret(a).k,
        }
    }

    #[test]
    fn the_search_answers_what_the_table_says_for_every_number() {
        for admin in [false, true] {
            let table = default_table(&caps(admin));
            let prog = &default_filters(&caps(admin)).unwrap()[0];
            // Small: a tree, not a chain of one test per syscall.
            assert!(prog.len() < 400, "{} instructions", prog.len());
            let samples: [[u64; 6]; 6] = [
                [0; 6],
                [40, 0, 0, 0, 0, 0],
                [40 | 1 << 32, 0, 0, 0, 0, 0],
                [0x8, 1, 2, 3, 4, 5],
                [0x1000_0000, 0, 0, 0, 0, 0], // CLONE_NEWUSER
                [0x0002_0000 | 0x11, 0, 0, 0, 0, 0],
            ];
            for nr in (0..1100).chain([X32_BIT, X32_BIT + 1, u32::MAX]) {
                for args in &samples {
                    assert_eq!(
                        run(prog, AUDIT_ARCH, nr, args),
                        expected(&table, nr, args),
                        "syscall {nr} args {args:x?} admin {admin}"
                    );
                }
            }
            // Another architecture's numbers are other calls.
            assert_eq!(run(prog, 0x4000_0003, 0, &[0; 6]), RET_KILL_PROCESS);
        }
    }

    #[test]
    fn the_profile_refuses_what_docker_refuses() {
        let prog = &default_filters(&caps(false)).unwrap()[0];
        let eperm = RET_ERRNO | libc::EPERM as u32;
        let at = |nr: libc::c_long, a0: u64| run(prog, AUDIT_ARCH, nr as u32, &[a0, 0, 0, 0, 0, 0]);
        assert_eq!(at(libc::SYS_read, 0), RET_ALLOW);
        assert_eq!(at(libc::SYS_mount, 0), eperm);
        assert_eq!(at(libc::SYS_unshare, 0), eperm);
        assert_eq!(at(libc::SYS_reboot, 0), eperm);
        assert_eq!(at(libc::SYS_socket, libc::AF_INET as u64), RET_ALLOW);
        assert_eq!(at(libc::SYS_socket, AF_VSOCK), eperm);
        assert_eq!(at(libc::SYS_personality, 0x8), RET_ALLOW);
        assert_eq!(at(libc::SYS_personality, 0x4), eperm);
        // A thread (CLONE_VM|CLONE_THREAD...) may be made, a namespace (CLONE_NEWNET) not.
        assert_eq!(at(libc::SYS_clone, 0x0001_0f00), RET_ALLOW);
        assert_eq!(at(libc::SYS_clone, 0x4000_0000), eperm);
        assert_eq!(at(libc::SYS_clone3, 0), RET_ERRNO | libc::ENOSYS as u32);
        // With CAP_SYS_ADMIN, mount and namespaces are the container's business.
        let admin = &default_filters(&caps(true)).unwrap()[0];
        assert_eq!(
            run(admin, AUDIT_ARCH, libc::SYS_mount as u32, &[0; 6]),
            RET_ALLOW
        );
        assert_eq!(
            run(
                admin,
                AUDIT_ARCH,
                libc::SYS_clone as u32,
                &[0x4000_0000, 0, 0, 0, 0, 0]
            ),
            RET_ALLOW
        );
    }
}
