//! Capabilities and seccomp for the service process.

use caps::{CapSet, Capability, CapsHashSet};

use super::error::SetupError;

/// Docker's default capability set (moby oci/caps/defaults.go): what a container's root keeps.
pub const DEFAULT_CAPS: [Capability; 14] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

fn caps_err(step: &str, e: caps::errors::CapsError) -> SetupError {
    SetupError::other(step, e.to_string())
}

/// Shrinks the bounding set to `keep`. Must run while the process still has CAP_SETPCAP,
/// i.e. before it changes to a non-root user.
pub fn limit_bounding(keep: &CapsHashSet) -> Result<(), SetupError> {
    // A capability the running kernel does not know cannot be dropped; it is not there.
    let supported = caps::runtime::thread_all_supported();
    for cap in caps::all() {
        if !keep.contains(&cap) {
            if !supported.contains(&cap) {
                continue;
            }
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| caps_err("drop bounding capability", e))?;
        }
    }
    Ok(())
}

/// Sets the process's capabilities after the user change: a root service keeps `keep` as
/// effective and permitted; inheritable and ambient stay empty (CVE-2022-24769: a non-empty
/// inheritable set let file capabilities of an executable be gained on exec).
pub fn set_process_caps(uid: u32, keep: &CapsHashSet) -> Result<(), SetupError> {
    caps::clear(None, CapSet::Ambient).map_err(|e| caps_err("clear ambient capabilities", e))?;
    caps::clear(None, CapSet::Inheritable)
        .map_err(|e| caps_err("clear inheritable capabilities", e))?;
    if uid == 0 {
        caps::set(None, CapSet::Effective, keep)
            .map_err(|e| caps_err("set effective capabilities", e))?;
        caps::set(None, CapSet::Permitted, keep)
            .map_err(|e| caps_err("set permitted capabilities", e))?;
    }
    Ok(())
}

/// The default set, plus `cap_add`, minus `cap_drop` (`ALL` allowed in either), or every
/// capability for a privileged service.
pub fn effective_set(
    add: &[String],
    drop: &[String],
    privileged: bool,
) -> Result<CapsHashSet, SetupError> {
    // Every capability berth itself may hold: a host that keeps one out of the bounding set
    // (this development host lacks CAP_SYS_RESOURCE) cannot grant it, and asking for it would
    // fail the whole capset.
    let everything = || caps::read(None, CapSet::Bounding).unwrap_or_else(|_| caps::all());
    if privileged {
        return Ok(everything());
    }
    let parse = |n: &str| -> Result<Capability, SetupError> {
        let canon = caps::to_canonical(n);
        canon
            .parse::<Capability>()
            .map_err(|_| SetupError::other("capabilities", format!("unknown capability `{n}`")))
    };
    let mut set: CapsHashSet = DEFAULT_CAPS.iter().copied().collect();
    if drop.iter().any(|d| d.eq_ignore_ascii_case("all")) {
        set.clear();
    }
    for d in drop.iter().filter(|d| !d.eq_ignore_ascii_case("all")) {
        set.remove(&parse(d)?);
    }
    if add.iter().any(|a| a.eq_ignore_ascii_case("all")) {
        return Ok(everything());
    }
    for a in add {
        set.insert(parse(a)?);
    }
    Ok(set)
}
