//! The default seccomp filter: Docker's default profile (moby profiles/seccomp/default.json,
//! summarised in docs/runtime-notes.md §3), compiled to BPF by seccompiler.
//!
//! Compiled once per capability set by berth, then handed to each container's setup process as
//! raw BPF: the start path does not compile filters (crun's lesson). Two filters are stacked:
//! the allow-list (anything else fails with EPERM) and a small one that answers ENOSYS for
//! `clone3`, so that libc falls back to `clone`, whose flags the allow-list can inspect.

use std::collections::BTreeMap;

use caps::{Capability, CapsHashSet};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

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

fn cond(arg: u8, op: SeccompCmpOp, v: u64) -> Result<SeccompCondition, SetupError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, v)
        .map_err(|e| SetupError::other("compile seccomp filter", e.to_string()))
}

fn rule(conds: Vec<SeccompCondition>) -> Result<SeccompRule, SetupError> {
    SeccompRule::new(conds).map_err(|e| SetupError::other("compile seccomp filter", e.to_string()))
}

fn arch() -> TargetArch {
    #[cfg(target_arch = "aarch64")]
    return TargetArch::aarch64;
    #[cfg(not(target_arch = "aarch64"))]
    TargetArch::x86_64
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<Vec<u64>, SetupError> {
    let f = SeccompFilter::new(rules, mismatch, matched, arch())
        .map_err(|e| SetupError::other("compile seccomp filter", e.to_string()))?;
    let prog: BpfProgram = f.try_into().map_err(|e: seccompiler::BackendError| {
        SetupError::other("compile seccomp filter", e.to_string())
    })?;
    Ok(prog
        .iter()
        .map(|i| {
            (u64::from(i.code) << 48)
                | (u64::from(i.jt) << 40)
                | (u64::from(i.jf) << 32)
                | u64::from(i.k)
        })
        .collect())
}

/// The default profile for a container holding `caps`, as BPF programs to install in order.
pub fn default_filters(caps: &CapsHashSet) -> Result<Vec<Vec<u64>>, SetupError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in ALLOWED {
        rules.insert(*nr, Vec::new());
    }
    let admin = caps.contains(&Capability::CAP_SYS_ADMIN);
    for (cap, list) in gated() {
        if caps.contains(&cap) {
            for nr in list {
                rules.insert(*nr, Vec::new());
            }
        }
    }
    // socket: every family but AF_VSOCK.
    rules.insert(
        libc::SYS_socket,
        vec![rule(vec![cond(0, SeccompCmpOp::Ne, AF_VSOCK)?])?],
    );
    // personality: only the harmless personas.
    let mut pers = Vec::new();
    for v in [0u64, 0x8, 0x20000, 0x20008, 0xffff_ffff] {
        pers.push(rule(vec![cond(0, SeccompCmpOp::Eq, v)?])?);
    }
    rules.insert(libc::SYS_personality, pers);
    // clone: no new namespaces without CAP_SYS_ADMIN.
    if admin {
        rules.insert(libc::SYS_clone, Vec::new());
    } else {
        rules.insert(
            libc::SYS_clone,
            vec![rule(vec![cond(
                0,
                SeccompCmpOp::MaskedEq(CLONE_NS_FLAGS),
                0,
            )?])?],
        );
    }
    let allow = compile(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
    )?;
    let mut filters = vec![allow];
    if !admin {
        // clone3's flags live in memory seccomp cannot read: say it does not exist, and libc
        // uses clone instead.
        let mut r = BTreeMap::new();
        r.insert(libc::SYS_clone3, Vec::new());
        filters.push(compile(
            r,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
        )?);
    }
    Ok(filters)
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

    #[test]
    fn compiles_for_default_and_admin_sets() {
        let default: CapsHashSet = super::super::security::DEFAULT_CAPS
            .iter()
            .copied()
            .collect();
        let f = default_filters(&default).unwrap();
        assert_eq!(f.len(), 2);
        assert!(f[0].len() > 300);
        let mut admin = default.clone();
        admin.insert(Capability::CAP_SYS_ADMIN);
        assert_eq!(default_filters(&admin).unwrap().len(), 1);
    }
}
