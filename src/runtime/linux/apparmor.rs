//! The AppArmor profile of berth's containers, on hosts where AppArmor is on (Debian, Ubuntu,
//! SUSE). It holds what the kernel's other layers do not: writes to /proc and /sys files that
//! a capability would otherwise allow (`cap_add: [SYS_ADMIN]` can remount /proc/sys), mounts,
//! and signals and ptrace to processes outside the profile. Its rules are those of Docker's
//! `docker-default`, so a file that runs under Docker runs here and a probe Docker's profile
//! refuses is refused here (the isolation suite in tests/isolation/ checks both).
//!
//! The profile is loaded with Debian's `apparmor_parser` when it is not in the kernel yet (or
//! berth's text changed), and a container's processes enter it when they execute their program
//! (`/proc/self/attr/apparmor/exec`), the container's init included. `security_opt:
//! [apparmor=NAME]` chooses another loaded profile, `apparmor=unconfined` none; a privileged
//! container runs unconfined, as under Docker.

use std::io::Write as _;
use std::path::Path;

/// The profile berth loads and gives every container by default.
pub const DEFAULT_PROFILE: &str = "berth-default";

/// Where the kernel lists its profiles (securityfs).
const PROFILES: &str = "/sys/kernel/security/apparmor/profiles";

#[derive(Debug, thiserror::Error)]
pub enum AppArmorError {
    #[error(
        "AppArmor is enabled on this host, but `apparmor_parser` could not load berth's \
         profile {name}: {why} (install Debian's `apparmor` package, or set \
         `security_opt: [apparmor=unconfined]` to run the service without a profile)"
    )]
    Load { name: String, why: String },
    #[error(
        "security_opt asks for the AppArmor profile `{0}`, which the kernel has not loaded \
         (load it with `apparmor_parser -r FILE`, or use apparmor=unconfined)"
    )]
    NotLoaded(String),
}

/// Whether the kernel enforces AppArmor here and berth can see its policy (securityfs).
pub fn enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|t| t.trim_start().starts_with('Y'))
        && Path::new(PROFILES).exists()
}

/// Whether a profile of that name is loaded.
fn loaded(name: &str) -> bool {
    std::fs::read_to_string(PROFILES).is_ok_and(|t| {
        t.lines()
            .any(|l| l.rsplit_once(' ').is_some_and(|(n, _)| n == name))
    })
}

/// berth's profile, with Docker's rules (moby's profiles/apparmor template), grouped by what
/// they protect.
pub fn profile_text(name: &str) -> String {
    format!(
        r#"# {name}: the AppArmor profile berth gives its containers (written by berth; loaded
# again when it changes). The other layers (capabilities, seccomp, the device cgroup) bound
# the rest, so the network, capabilities and files are open here.
@{{PROC}}=/proc/

profile {name} flags=(attach_disconnected,mediate_deleted) {{
  network,
  capability,
  file,
  umount,

  # Signals from the host's tools and among the container's own processes; ptrace only
  # among them.
  signal (receive) peer=unconfined,
  signal (send,receive) peer={name},
  ptrace (trace,read,tracedby,readby) peer={name},

  # No mounts, whatever the capabilities.
  deny mount,

  # /proc: no writes to its top-level files nor to anything but a process's own directory
  # and /proc/sys/kernel/shm* (IPC is namespaced); never sysrq-trigger or kcore.
  deny @{{PROC}}/* w,
  deny @{{PROC}}/{{[^1-9],[^1-9][^0-9],[^1-9s][^0-9y][^0-9s],[^1-9][^0-9][^0-9][^0-9/]*}}/** w,
  deny @{{PROC}}/sys/[^k]** w,
  deny @{{PROC}}/sys/kernel/{{?,??,[^s][^h][^m]**}} w,
  deny @{{PROC}}/sysrq-trigger rwklx,
  deny @{{PROC}}/kcore rwklx,

  # /sys: nothing written outside /sys/fs/cgroup; firmware, powercap (energy counters, a
  # side channel) and the LSMs' own files not even read.
  deny /sys/[^f]*/** wklx,
  deny /sys/f[^s]*/** wklx,
  deny /sys/fs/[^c]*/** wklx,
  deny /sys/fs/c[^g]*/** wklx,
  deny /sys/fs/cg[^r]*/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/devices/virtual/powercap/** rwklx,
  deny /sys/kernel/security/** rwklx,
}}
"#
    )
}

/// Loads berth's default profile unless the kernel has this very text already. A stamp under
/// /run (which, like the kernel's policy, does not survive a reboot) records the text's digest.
fn ensure_default() -> Result<(), AppArmorError> {
    use sha2::Digest as _;
    let text = profile_text(DEFAULT_PROFILE);
    let digest: String = sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let stamp = Path::new("/run/berth").join(format!("apparmor-{DEFAULT_PROFILE}.sha256"));
    if loaded(DEFAULT_PROFILE) && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == digest)
    {
        return Ok(());
    }
    let fail = |why: String| AppArmorError::Load {
        name: DEFAULT_PROFILE.into(),
        why,
    };
    // --replace: a profile of the same name (an older berth's) is replaced, and processes
    // confined by it move to the new one. --skip-cache: nothing is written under /etc.
    let mut child = std::process::Command::new("apparmor_parser")
        .args(["--replace", "--skip-cache"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| fail(format!("writing the profile: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    // Only a shortcut for the next start: without it the profile is loaded again.
    let _ = std::fs::create_dir_all("/run/berth")
        .and_then(|()| std::fs::write(&stamp, format!("{digest}\n")));
    Ok(())
}

/// The profile a container's processes run under: None where AppArmor is off (Docker's
/// behaviour: the option names a confinement the host does not have), for `privileged`, and
/// for `apparmor=unconfined`; the named one (which must be loaded) for `apparmor=NAME`; berth's
/// own otherwise, loaded on first use.
pub fn choose(asked: Option<&str>, privileged: bool) -> Result<Option<String>, AppArmorError> {
    if !enabled() {
        return Ok(None);
    }
    match asked {
        Some("unconfined") => Ok(None),
        Some(name) if name != DEFAULT_PROFILE => {
            if loaded(name) {
                Ok(Some(name.to_string()))
            } else {
                Err(AppArmorError::NotLoaded(name.to_string()))
            }
        }
        _ if privileged && asked.is_none() => Ok(None),
        _ => {
            ensure_default()?;
            Ok(Some(DEFAULT_PROFILE.to_string()))
        }
    }
}

/// In a container's process, before it executes its program: the profile it enters then.
pub fn set_exec_profile(name: &str) -> std::io::Result<()> {
    let value = format!("exec {name}");
    // The per-LSM file (5.8+), where another LSM cannot take the write; the shared one before.
    match std::fs::write("/proc/self/attr/apparmor/exec", &value) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write("/proc/self/attr/exec", &value)
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_names_itself_and_refuses_mounts_and_proc_writes() {
        let t = profile_text("p1");
        assert!(t.contains("profile p1 flags=(attach_disconnected,mediate_deleted) {"));
        assert!(t.contains("signal (send,receive) peer=p1,"));
        assert!(t.contains("deny mount,"));
        assert!(t.contains("deny @{PROC}/sysrq-trigger rwklx,"));
        // Balanced braces, or apparmor_parser refuses it.
        assert_eq!(t.matches('{').count(), t.matches('}').count());
    }
}
