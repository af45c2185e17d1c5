//! What berth needs of the kernel, checked once when a runtime is opened, so that an older
//! kernel gets one sentence naming the feature and the version instead of an ENOSYS deep
//! inside a container's setup (or, worse, a wrong answer: without pidfd_open a running
//! container looked exited). Each probe calls the syscall with arguments it must refuse:
//! only ENOSYS means the kernel lacks it.
//!
//! The floor is Linux 5.12 (mount_setattr, for every bind mount and volume); the others are
//! below it. docs/kernel.md lists every feature berth uses, where, and its fallbacks.

use std::sync::OnceLock;

/// (syscall number, what berth uses it for, the first kernel that has it).
const NEEDED: [(libc::c_long, &str, &str); 3] = [
    (
        libc::SYS_pidfd_open,
        "waiting on containers (pidfd_open)",
        "5.3",
    ),
    (
        libc::SYS_openat2,
        "resolving paths inside a container's root (openat2)",
        "5.6",
    ),
    (
        libc::SYS_mount_setattr,
        "volumes and bind mounts (mount_setattr)",
        "5.12",
    ),
];

/// Whether the running kernel has the syscall (anything but ENOSYS to a call it must refuse).
fn has(nr: libc::c_long) -> bool {
    // SAFETY: every argument is -1 or 0 (null pointers, zero sizes, an invalid descriptor);
    // each of these syscalls fails on them before touching memory, and a kernel without the
    // syscall answers ENOSYS.
    let r = unsafe { libc::syscall(nr, -1 as libc::c_long, 0usize, 0usize, 0usize, 0usize) };
    r >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
}

fn release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// None when the kernel has everything berth needs; otherwise the message for the user.
pub fn missing() -> Option<String> {
    static CHECKED: OnceLock<Option<String>> = OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let lacks: Vec<_> = NEEDED.iter().filter(|(nr, _, _)| !has(*nr)).collect();
            let newest = lacks.iter().map(|(_, _, v)| *v).max_by(|a, b| {
                let parse = |v: &str| -> (u32, u32) {
                    let (a, b) = v.split_once('.').unwrap_or((v, "0"));
                    (a.parse().unwrap_or(0), b.parse().unwrap_or(0))
                };
                parse(a).cmp(&parse(b))
            })?;
            let what: Vec<String> = lacks
                .iter()
                .map(|(_, w, v)| format!("{w}, from Linux {v}"))
                .collect();
            Some(format!(
                "this kernel ({}) is older than berth needs (Linux {newest} or later); it lacks: {}",
                release(),
                what.join("; ")
            ))
        })
        .clone()
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_kernel_has_what_berth_needs_and_a_missing_syscall_is_seen() {
        assert_eq!(super::missing(), None);
        // A number no kernel has answers ENOSYS.
        assert!(!super::has(100_000));
    }
}
