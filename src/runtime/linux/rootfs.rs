//! The container's root filesystem, built inside its new mount namespace by its PID 1, then
//! entered with `pivot_root`. Order matters and is explained at each step.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};

use super::error::SetupError;
use super::spec::{LaunchSpec, Rootfs};

use crate::image::host::HOST_DIRS;

/// Files of the host's /etc that `image: host` hides (they are whited out in the container's
/// upper layer, so the overlay shows them as absent).
const HOST_SECRETS: [&str; 8] = [
    "shadow",
    "shadow-",
    "gshadow",
    "gshadow-",
    "security/opasswd",
    "sudoers",
    "ssh/ssh_host_rsa_key",
    "ssh/ssh_host_ed25519_key",
];

/// Docker's default masked paths (moby oci/defaults.go): hidden behind an empty read-only
/// directory or /dev/null.
const MASKED: [&str; 10] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];
const MASKED_MORE: [&str; 2] = ["/sys/devices/virtual/powercap", "/proc/interrupts"];

/// Docker's default read-only paths.
const READ_ONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Device nodes every container gets: created in its own /dev (as runc does outside a user
/// namespace), cheaper than a bind mount each. (name, major, minor)
const DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

fn p2s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn mnt(
    step: &str,
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), SetupError> {
    mount(src, target, fstype, flags, data)
        .map_err(|e| SetupError::sys(step, Some(&p2s(target)), e))
}

/// Makes `p` a real directory. An image may ship `/proc` or `/dev` as a symlink (to `/`, to
/// `/etc`...): mounting on it would follow the link, and before pivot_root an absolute link
/// resolves on the host's tree. The link is replaced (the overlay records a whiteout), never
/// followed (the class of CVE-2021-30465).
fn real_dir(p: &Path) -> Result<(), SetupError> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => {
            fs::remove_file(p)
                .map_err(|e| SetupError::io("replace non-directory", Some(&p2s(p)), &e))?;
            fs::create_dir(p).map_err(|e| SetupError::io("create directory", Some(&p2s(p)), &e))
        }
        Err(_) => {
            fs::create_dir(p).map_err(|e| SetupError::io("create directory", Some(&p2s(p)), &e))
        }
    }
}

fn mkdir_all(p: &Path) -> Result<(), SetupError> {
    fs::create_dir_all(p).map_err(|e| SetupError::io("create directory", Some(&p2s(p)), &e))
}

/// The shared top layer of every image-based root (what Docker calls the init layer): the
/// directories berth mounts on and the /etc files it binds over, present before the container's
/// first start, so that building the root writes nothing to the container's upper layer (each
/// copy-up there is several inodes on the host's disk, per container, per start).
const INIT_LAYER: &str = "init-layer-1";

/// The root's directories that berth mounts on (or binds into, for `etc`).
const MOUNT_POINTS: [&str; 6] = ["proc", "dev", "sys", "tmp", "run", "etc"];

/// Makes the init layer under `state` once (atomically: built aside, then renamed into place)
/// and returns its path.
pub fn init_layer(state: &Path) -> Result<PathBuf, SetupError> {
    let layer = state.join(INIT_LAYER);
    if layer.is_dir() {
        return Ok(layer);
    }
    // Unique to this call: containers of one project are prepared in parallel.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = state.join(format!(".{INIT_LAYER}.{}.{n}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let made = (|| -> Result<(), SetupError> {
        for d in MOUNT_POINTS {
            mkdir_all(&tmp.join(d))?;
            let mode = if d == "tmp" { 0o1777 } else { 0o755 };
            fs::set_permissions(tmp.join(d), fs::Permissions::from_mode(mode))
                .map_err(|e| SetupError::io("chmod", Some(&p2s(&tmp.join(d))), &e))?;
        }
        for name in ETC_FILES {
            let f = tmp.join("etc").join(name);
            fs::File::create(&f).map_err(|e| SetupError::io("create", Some(&p2s(&f)), &e))?;
            fs::set_permissions(&f, fs::Permissions::from_mode(0o644))
                .map_err(|e| SetupError::io("chmod", Some(&p2s(&f)), &e))?;
        }
        Ok(())
    })();
    let r = made.and_then(|()| match fs::rename(&tmp, &layer) {
        Ok(()) => Ok(()),
        // Another berth made it first.
        Err(_) if layer.is_dir() => Ok(()),
        Err(e) => Err(SetupError::io(
            "create the init layer",
            Some(&p2s(&layer)),
            &e,
        )),
    });
    let _ = fs::remove_dir_all(&tmp);
    r.map(|()| layer)
}

/// Builds the root filesystem at `<dir>/root` and pivots into it. Runs in the container's mount
/// namespace, as its PID 1, before anything of the service runs.
pub fn build(spec: &LaunchSpec) -> Result<(), SetupError> {
    // Nothing done here may propagate back to the host's mount table.
    mnt(
        "make mounts private",
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;

    // With a size limit the writable layer lives in a file system of that size, mounted in
    // this namespace only; writes past it fail with ENOSPC inside the container.
    let layer = match &spec.rw_device {
        Some(dev) => {
            let rw = spec.dir.join("rw");
            mkdir_all(&rw)?;
            mnt(
                "mount the sized writable layer",
                Some(&p2s(dev)),
                &rw,
                Some("ext4"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                None,
            )?;
            rw
        }
        None => spec.dir.clone(),
    };
    let root = layer.join("root");
    let upper = layer.join("upper");
    let work = layer.join("work");
    mkdir_all(&root)?;
    match &spec.rootfs {
        Rootfs::Layers(_) | Rootfs::HostLayers(_) => {
            let (layers, host) = match &spec.rootfs {
                Rootfs::HostLayers(l) => (l, true),
                Rootfs::Layers(l) => (l, false),
                Rootfs::Host => unreachable!("matched above"),
            };
            // overlayfs lists lower layers top first.
            let mut lower: Vec<String> = layers.iter().rev().map(|p| p2s(p)).collect();
            // A read-only root with nothing to mount into it needs no writable layer: the
            // overlay of the layers alone is read-only, and no upper or work directory is
            // made and removed with each container (the init layer on top holds the mount
            // points and /etc's files; overlayfs needs two layers without an upper one).
            // Mounts keep one: their targets may have to be made.
            if !host
                && spec.read_only
                && spec.mounts.is_empty()
                && spec.rw_device.is_none()
                && layers.len() >= 2
            {
                mnt(
                    "mount overlay",
                    Some("overlay"),
                    &root,
                    Some("overlay"),
                    MsFlags::MS_NODEV | MsFlags::MS_RDONLY,
                    Some(&format!("lowerdir={}", lower.join(":"))),
                )?;
                return finish_root(spec, &root);
            }
            mkdir_all(&upper)?;
            mkdir_all(&work)?;
            if host {
                // The host directories' upper directories are made before the root overlay is
                // mounted over their parent (changing an upper layer under a mounted overlay
                // is undefined), and an empty bottom layer lets an image with no layers yet
                // (the first step of a build `FROM host`) have a root overlay.
                host_uppers(&upper, &layer.join("hwork"), layers)?;
                let base = layer.join("base");
                mkdir_all(&base)?;
                lower.push(p2s(&base));
            }
            mount_overlay("mount overlay", &root, &lower, &upper, &work, true)?;
            if host {
                host_layered(&root, &upper, &layer.join("hwork"), layers)?;
            }
        }
        Rootfs::Host => {
            // The root itself is the container's own directory (bind-mounted so it is a mount
            // point pivot_root can use); the host's OS directories are overlays on it.
            mnt(
                "bind root",
                Some(&p2s(&root)),
                &root,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )?;
            host_skeleton(&root, &upper, &work)?;
        }
    }

    finish_root(spec, &root)
}

/// The root's own file systems, its /etc files and masks, then pivot_root into it.
fn finish_root(spec: &LaunchSpec, root: &Path) -> Result<(), SetupError> {
    let root = root.to_path_buf();
    for d in MOUNT_POINTS {
        real_dir(&root.join(d))?;
    }
    // Only when it differs: a chmod in an overlay copies the directory up, a write per start.
    let tmp = root.join("tmp");
    if fs::symlink_metadata(&tmp).is_ok_and(|m| m.permissions().mode() & 0o7777 != 0o1777) {
        let _ = fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777));
    }

    // /proc: a new instance, which shows only this PID namespace.
    mnt(
        "mount /proc",
        Some("proc"),
        &root.join("proc"),
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    super::setup::trace("rootfs-base");
    build_dev(&root, spec.shm_size, spec.host_ipc)?;
    add_devices(&root, &spec.devices)?;
    super::setup::trace("rootfs-dev");
    // Sysctls go through this container's own /proc/sys, before it is made read-only.
    set_sysctls(&root, &spec.sysctls, spec.own_network, !spec.host_ipc)?;
    build_sys(&root, spec.own_network)?;
    let staging = root.join("dev").join(STAGING);
    mkdir_all(&staging)?;
    etc_files(spec, &root, &staging)?;
    super::mounts::apply(&root, &spec.mounts)?;
    super::setup::trace("rootfs-sys-etc");
    mask(&root, &staging)?;
    // The bound files and the masks' directory outlive their names: nothing of the staging
    // directory stays visible in the container's /dev.
    for name in ETC_FILES {
        let _ = fs::remove_file(staging.join(name));
    }
    let _ = fs::remove_dir(staging.join("empty"));
    fs::remove_dir(&staging)
        .map_err(|e| SetupError::io("remove staging directory", Some(&p2s(&staging)), &e))?;
    super::setup::trace("rootfs-masks");

    // pivot_root into the new root and drop the old one entirely: nothing of the host's mount
    // tree stays reachable (chroot would leave it one `..` away).
    std::env::set_current_dir(&root)
        .map_err(|e| SetupError::io("chdir to root", Some(&p2s(&root)), &e))?;
    nix::unistd::pivot_root(".", ".")
        .map_err(|e| SetupError::sys("pivot_root", Some(&p2s(&root)), e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| SetupError::sys("detach old root", None, e))?;
    std::env::set_current_dir("/").map_err(|e| SetupError::io("chdir /", None, &e))?;

    if spec.read_only {
        // The root, and with `image: host` each OS directory's own overlay on it.
        let mut targets = vec![PathBuf::from("/")];
        if spec.rootfs.has_host() {
            for name in HOST_DIRS {
                let p = Path::new("/").join(name);
                if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                    targets.push(p);
                }
            }
        }
        for t in targets {
            mnt(
                "make root read-only",
                None,
                &t,
                None,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
                None,
            )?;
        }
    }
    if spec.host_uts {
        // The host's own names: setting one here would rename the host.
        return Ok(());
    }
    nix::unistd::sethostname(&spec.hostname)
        .map_err(|e| SetupError::sys("sethostname", None, e))?;
    if let Some(d) = &spec.domainname {
        // SAFETY: setdomainname reads `len` bytes from a valid buffer that outlives the call.
        let r = unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) };
        if r != 0 {
            return Err(SetupError::sys(
                "setdomainname",
                None,
                nix::errno::Errno::last(),
            ));
        }
    }
    Ok(())
}

/// `image: host`: overlays of the host's OS directories (symlinks such as /bin -> usr/bin are
/// copied as symlinks), empty data directories, and /etc's secrets whited out.
fn host_skeleton(root: &Path, upper: &Path, work: &Path) -> Result<(), SetupError> {
    for name in linked_host_dirs(root)? {
        let host = Path::new("/").join(name);
        let target = root.join(name);
        let (u, w) = (upper.join(name), work.join(name));
        mkdir_all(&u)?;
        mkdir_all(&w)?;
        mkdir_all(&target)?;
        if name == "etc" {
            whiteout_secrets(&u, &[])?;
        }
        mount_overlay("mount host overlay", &target, &[p2s(&host)], &u, &w, false)?;
    }
    for d in [
        "var/tmp",
        "var/log",
        "var/cache",
        "var/lib",
        "home",
        "root",
        "srv",
        "opt",
        "mnt",
        "media",
    ] {
        mkdir_all(&root.join(d))?;
    }
    let _ = fs::set_permissions(root.join("var/tmp"), fs::Permissions::from_mode(0o1777));
    let _ = fs::set_permissions(root.join("root"), fs::Permissions::from_mode(0o700));
    Ok(())
}

/// The host OS directories (not symlinks) that a host-based root gets.
fn host_dir_names() -> impl Iterator<Item = &'static str> {
    HOST_DIRS
        .into_iter()
        .filter(|name| fs::symlink_metadata(Path::new("/").join(name)).is_ok_and(|m| m.is_dir()))
}

/// `FROM host` images, before the root overlay: an upper and a work directory for each host
/// OS directory (the upper at its own path in the container's upper layer), and /etc's
/// secrets whited out.
fn host_uppers(upper: &Path, hwork: &Path, layers: &[PathBuf]) -> Result<(), SetupError> {
    for name in host_dir_names() {
        mkdir_all(&upper.join(name))?;
        mkdir_all(&hwork.join(name))?;
        if name == "etc" {
            whiteout_secrets(&upper.join(name), layers)?;
        }
    }
    Ok(())
}

/// `FROM host` images, over the root overlay: each host OS directory an overlay of the
/// image's own copies of it (top first) over the host's, and the host's symlinked ones
/// (`/bin -> usr/bin`) as symlinks where the image has nothing.
fn host_layered(
    root: &Path,
    upper: &Path,
    hwork: &Path,
    layers: &[PathBuf],
) -> Result<(), SetupError> {
    for name in linked_host_dirs(root)? {
        let host = Path::new("/").join(name);
        let target = root.join(name);
        let mut lower: Vec<String> = layers
            .iter()
            .rev()
            .map(|l| l.join(name))
            .filter(|d| fs::symlink_metadata(d).is_ok_and(|m| m.is_dir()))
            .map(|d| p2s(&d))
            .collect();
        lower.push(p2s(&host));
        mount_overlay(
            "mount host overlay",
            &target,
            &lower,
            &upper.join(name),
            &hwork.join(name),
            true,
        )?;
    }
    for d in ["var/tmp", "home", "root", "srv", "opt", "mnt", "media"] {
        mkdir_all(&root.join(d))?;
    }
    let _ = fs::set_permissions(root.join("var/tmp"), fs::Permissions::from_mode(0o1777));
    Ok(())
}

/// Mounts an overlay at `target` of `lower` (top first) under `upper`. nodev: a layer may
/// carry device nodes (a tar can hold a block device 8:0); they must not open host devices,
/// the container's /dev is its own tmpfs. `whole_files`: redirect_dir and metacopy off, for an
/// upper layer a build turns into an image layer (a renamed directory or a chmod'ed file would
/// otherwise be a bare xattr pointing into a lower layer).
fn mount_overlay(
    what: &'static str,
    target: &Path,
    lower: &[String],
    upper: &Path,
    work: &Path,
    whole_files: bool,
) -> Result<(), SetupError> {
    let mut data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        p2s(upper),
        p2s(work)
    );
    if whole_files {
        data.push_str(",redirect_dir=off,metacopy=off");
    }
    mnt(
        what,
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_NODEV,
        Some(&data),
    )
}

/// Makes the host's symlinked OS directories (`/bin -> usr/bin`) in `root` as the same
/// symlinks, and returns the names of the real ones, for their overlays.
fn linked_host_dirs(root: &Path) -> Result<Vec<&'static str>, SetupError> {
    let mut dirs = Vec::new();
    for name in HOST_DIRS {
        let host = Path::new("/").join(name);
        let Ok(meta) = fs::symlink_metadata(&host) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            copy_host_symlink(&host, &root.join(name))?;
        } else if meta.is_dir() {
            dirs.push(name);
        }
    }
    Ok(dirs)
}

/// A host OS directory that is a symlink (`/bin -> usr/bin`) as the same symlink in the root,
/// unless the root has something there.
fn copy_host_symlink(host: &Path, target: &Path) -> Result<(), SetupError> {
    if fs::symlink_metadata(target).is_ok() {
        return Ok(());
    }
    let to = fs::read_link(host)
        .map_err(|e| SetupError::io("read host symlink", Some(&p2s(host)), &e))?;
    symlink(&to, target).map_err(|e| SetupError::io("create symlink", Some(&p2s(target)), &e))
}

/// An overlay whiteout (a 0:0 character device) in the upper layer hides the lower file.
fn whiteout_secrets(upper_etc: &Path, layers: &[PathBuf]) -> Result<(), SetupError> {
    let mut secrets: Vec<PathBuf> = HOST_SECRETS.iter().map(PathBuf::from).collect();
    // Every private host key, whatever its type.
    if let Ok(rd) = fs::read_dir("/etc/ssh") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("ssh_host_") && !n.ends_with(".pub") {
                secrets.push(PathBuf::from("ssh").join(n));
            }
        }
    }
    for rel in secrets {
        if fs::symlink_metadata(Path::new("/etc").join(&rel)).is_err() {
            continue;
        }
        // An image built `FROM host` that has its own (a `RUN useradd` wrote /etc/shadow)
        // shows its own; it already hides the host's.
        if layers
            .iter()
            .any(|l| fs::symlink_metadata(l.join("etc").join(&rel)).is_ok())
        {
            continue;
        }
        let wh = upper_etc.join(&rel);
        if let Some(parent) = wh.parent() {
            mkdir_all(parent)?;
        }
        if fs::symlink_metadata(&wh).is_ok() {
            continue;
        }
        mknod(&wh, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
            .map_err(|e| SetupError::sys("whiteout host secret", Some(&p2s(&wh)), e))?;
    }
    Ok(())
}

/// /dev: a small tmpfs with the usual device nodes bind-mounted from the host, a private devpts,
/// /dev/shm and /dev/mqueue.
/// Sets namespaced sysctls only: a host-wide one would change the host for every container.
fn set_sysctls(
    root: &Path,
    sysctls: &[(String, String)],
    own_network: bool,
    own_ipc: bool,
) -> Result<(), SetupError> {
    const IPC: [&str; 8] = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    for (k, v) in sysctls {
        let ipc = IPC.contains(&k.as_str()) || k.starts_with("fs.mqueue.");
        let namespaced = (ipc && own_ipc) || (k.starts_with("net.") && own_network);
        if !namespaced {
            return Err(SetupError::other(
                "set sysctl",
                format!(
                    "`{k}` is not namespaced{}: setting it would change the whole host",
                    if k.starts_with("net.") {
                        " with `network_mode: host`"
                    } else if ipc {
                        " with `ipc: host`"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let path = root.join("proc/sys").join(k.replace('.', "/"));
        fs::write(&path, v).map_err(|e| SetupError::io("set sysctl", Some(k), &e))?;
    }
    Ok(())
}

/// `devices:`: each host node made again at its path in the container's /dev tree, with the
/// host node's type, numbers, mode and owner (read before pivot_root, from the host's /dev).
/// The target is walked from the container's /dev one directory at a time with O_NOFOLLOW
/// and the node made with mknodat in the last one: `/dev/fd` is a symlink to the setup
/// process's own descriptors, and no target may lead through it (or any link) to the host.
fn add_devices(root: &Path, devices: &[(PathBuf, String)]) -> Result<(), SetupError> {
    use rustix::fs::{FileType, Mode as RMode, OFlags};
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let bad = |t: &str, why: &str| {
        SetupError::io("devices", Some(t), &std::io::Error::other(why.to_string()))
    };
    for (host, target) in devices {
        let md =
            fs::metadata(host).map_err(|e| SetupError::io("find device", Some(&p2s(host)), &e))?;
        let kind = if md.file_type().is_char_device() {
            FileType::CharacterDevice
        } else if md.file_type().is_block_device() {
            FileType::BlockDevice
        } else {
            return Err(bad(&p2s(host), "not a device node"));
        };
        let rel = target.trim_start_matches('/');
        let Some(inside) = rel.strip_prefix("dev/") else {
            return Err(bad(target, "the path in the container must be under /dev"));
        };
        let comps: Vec<&str> = inside.split('/').filter(|c| !c.is_empty()).collect();
        if comps.is_empty() || comps.iter().any(|c| *c == ".." || *c == ".") {
            return Err(bad(target, "expected a path like /dev/NAME"));
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut dir = rustix::fs::open(root.join("dev"), flags, RMode::empty()).map_err(|e| {
            SetupError::sys(
                "open /dev",
                Some(target),
                nix::errno::Errno::from_raw(e.raw_os_error()),
            )
        })?;
        for c in &comps[..comps.len() - 1] {
            dir = match rustix::fs::openat(&dir, *c, flags, RMode::empty()) {
                Ok(d) => d,
                Err(rustix::io::Errno::NOENT) => {
                    rustix::fs::mkdirat(&dir, *c, RMode::from_raw_mode(0o755)).map_err(|e| {
                        SetupError::sys(
                            "create device directory",
                            Some(target),
                            nix::errno::Errno::from_raw(e.raw_os_error()),
                        )
                    })?;
                    rustix::fs::openat(&dir, *c, flags, RMode::empty()).map_err(|e| {
                        SetupError::sys(
                            "open device directory",
                            Some(target),
                            nix::errno::Errno::from_raw(e.raw_os_error()),
                        )
                    })?
                }
                Err(e) => {
                    return Err(SetupError::sys(
                        "open device directory",
                        Some(target),
                        nix::errno::Errno::from_raw(e.raw_os_error()),
                    ));
                }
            };
        }
        let name = comps[comps.len() - 1];
        let _ = rustix::fs::unlinkat(&dir, name, rustix::fs::AtFlags::empty());
        let mode = RMode::from_raw_mode(md.mode() & 0o7777);
        rustix::fs::mknodat(&dir, name, kind, mode, md.rdev()).map_err(|e| {
            SetupError::sys(
                "create device node",
                Some(target),
                nix::errno::Errno::from_raw(e.raw_os_error()),
            )
        })?;
        // mknod applies the umask; the owner is the host node's.
        let _ = rustix::fs::chmodat(&dir, name, mode, rustix::fs::AtFlags::empty());
        let _ = rustix::fs::chownat(
            &dir,
            name,
            Some(rustix::fs::Uid::from_raw(md.uid())),
            Some(rustix::fs::Gid::from_raw(md.gid())),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        );
    }
    Ok(())
}

fn build_dev(root: &Path, shm_size: Option<u64>, host_ipc: bool) -> Result<(), SetupError> {
    let dev = root.join("dev");
    mnt(
        "mount /dev",
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for (d, major, minor) in DEVICES {
        let target = dev.join(d);
        mknod(
            &target,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .map_err(|e| SetupError::sys("create device node", Some(&p2s(&target)), e))?;
        // mknod applies the umask; the nodes are for everyone.
        let _ = fs::set_permissions(&target, fs::Permissions::from_mode(0o666));
    }
    for (name, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        symlink(to, dev.join(name))
            .map_err(|e| SetupError::io("create /dev symlink", Some(name), &e))?;
    }
    let pts = dev.join("pts");
    mkdir_all(&pts)?;
    mnt(
        "mount /dev/pts",
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    let shm = dev.join("shm");
    mkdir_all(&shm)?;
    if host_ipc {
        // `ipc: host`: POSIX shared memory lives in the host's /dev/shm, shared as Docker does.
        mnt(
            "bind the host's /dev/shm",
            Some("/dev/shm"),
            &shm,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
    } else {
        mnt(
            "mount /dev/shm",
            Some("shm"),
            &shm,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(&format!("mode=1777,size={}", shm_size.unwrap_or(64 << 20))),
        )?;
    }
    let mq = dev.join("mqueue");
    mkdir_all(&mq)?;
    mnt(
        "mount /dev/mqueue",
        Some("mqueue"),
        &mq,
        Some("mqueue"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    Ok(())
}

/// /sys read-only. A fresh sysfs needs the container's own network namespace (sysfs shows the
/// network devices of the namespace that mounts it); with the host's, the host's /sys is bound.
fn build_sys(root: &Path, own_network: bool) -> Result<(), SetupError> {
    let sys = root.join("sys");
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if own_network {
        mnt("mount /sys", Some("sysfs"), &sys, Some("sysfs"), ro, None)
    } else {
        mnt(
            "bind /sys",
            Some("/sys"),
            &sys,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        mnt(
            "make /sys read-only",
            None,
            &sys,
            None,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | ro,
            None,
        )
    }
}

/// The container's own /etc files, bound over the image's.
const ETC_FILES: [&str; 3] = ["hostname", "hosts", "resolv.conf"];

/// Where, in the container's /dev (a tmpfs of its own), the files bound into /etc and the
/// masks' empty directory are made before pivot_root, then unlinked: they cost no inode on the
/// host's disk, which on a file system without a journal (ext4 delays reusing freed inodes
/// there) made every start slower the more containers had come and gone.
const STAGING: &str = ".staging";

/// The text of the container's /etc/hostname, /etc/hosts and /etc/resolv.conf, in the order of
/// `ETC_FILES`. A container that shares another's network (`network_mode: container:X`) gets
/// X's, computed from X's launch spec.
pub fn etc_contents(spec: &LaunchSpec) -> [String; 3] {
    let hosts = spec.hosts.clone().unwrap_or_else(|| {
        format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n",
            spec.hostname
        )
    });
    let resolv = spec.resolv.clone().unwrap_or_else(|| {
        fs::read_to_string("/etc/resolv.conf")
            .ok()
            .filter(|r| !r.contains("127.0.0.") || !spec.own_network)
            .unwrap_or_default()
    });
    [format!("{}\n", spec.hostname), hosts, resolv]
}

/// /etc/hostname, /etc/hosts and /etc/resolv.conf, the container's own, bound over the image's
/// from the staging directory.
fn etc_files(spec: &LaunchSpec, root: &Path, staging: &Path) -> Result<(), SetupError> {
    for (name, text) in ETC_FILES.into_iter().zip(etc_contents(spec)) {
        let src = staging.join(name);
        fs::write(&src, text).map_err(|e| SetupError::io("write", Some(&p2s(&src)), &e))?;
        let _ = fs::set_permissions(&src, fs::Permissions::from_mode(0o644));
        let target = root.join("etc").join(name);
        if fs::symlink_metadata(&target)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false)
        {
            // A symlink in the image (resolv.conf -> ../run/...) would make the bind follow it.
            let _ = fs::remove_file(&target);
        }
        if fs::symlink_metadata(&target).is_err() {
            fs::File::create(&target)
                .map_err(|e| SetupError::io("create", Some(&p2s(&target)), &e))?;
        }
        mnt(
            "bind /etc file",
            Some(&p2s(&src)),
            &target,
            None,
            MsFlags::MS_BIND,
            None,
        )?;
    }
    Ok(())
}

/// Masks and read-only paths. All masked directories share one empty read-only directory
/// (one mount source, no tmpfs per path: it matters at hundreds of containers).
fn mask(root: &Path, staging: &Path) -> Result<(), SetupError> {
    let empty = staging.join("empty");
    mkdir_all(&empty)?;
    let _ = fs::set_permissions(&empty, fs::Permissions::from_mode(0o555));
    for p in MASKED.iter().chain(MASKED_MORE.iter()) {
        let target = root.join(p.trim_start_matches('/'));
        let Ok(meta) = fs::symlink_metadata(&target) else {
            continue;
        };
        let src = if meta.is_dir() {
            p2s(&empty)
        } else {
            "/dev/null".to_string()
        };
        mnt(
            "mask path",
            Some(&src),
            &target,
            None,
            MsFlags::MS_BIND,
            None,
        )?;
        if meta.is_dir() {
            mnt(
                "make mask read-only",
                None,
                &target,
                None,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
                None,
            )?;
        }
    }
    for p in READ_ONLY {
        let target = root.join(p.trim_start_matches('/'));
        if fs::symlink_metadata(&target).is_err() {
            continue;
        }
        mnt(
            "bind read-only path",
            Some(&p2s(&target)),
            &target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        mnt(
            "make path read-only",
            None,
            &target,
            None,
            MsFlags::MS_REMOUNT
                | MsFlags::MS_BIND
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            None,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_init_layer_is_made_once_even_by_many_at_once() {
        let state = tempfile::tempdir().unwrap();
        let made: Vec<PathBuf> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| s.spawn(|| init_layer(state.path())))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
        });
        assert!(made.iter().all(|p| *p == made[0]));
        let layer = &made[0];
        for name in ETC_FILES {
            let m = fs::metadata(layer.join("etc").join(name)).unwrap();
            assert!(
                m.is_file() && m.len() == 0 && m.mode() & 0o777 == 0o644,
                "{name}"
            );
        }
        assert_eq!(
            fs::metadata(layer.join("tmp")).unwrap().mode() & 0o7777,
            0o1777
        );
        // Nothing of the attempts stays beside it.
        let names: Vec<_> = fs::read_dir(state.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [INIT_LAYER]);
    }
}
