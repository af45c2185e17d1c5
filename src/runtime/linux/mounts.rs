//! The service's own mounts (volumes, bind mounts, tmpfs), made by the setup process inside
//! the container's mount namespace, on the new root before pivot_root.
//!
//! A target is resolved inside the container's root with openat2(RESOLVE_IN_ROOT): a symlink
//! in the image (`/data -> /etc`, or `-> ../../..`) resolves as it would inside the
//! container and can never point the mount at the host's tree (CVE-2021-30465's class). The
//! mount is attached to that descriptor with the new mount API (open_tree or fsmount, then
//! move_mount), so no path is looked up twice.

use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, OpenTreeFlags, fsconfig_create,
    fsconfig_set_string, fsmount, fsopen, move_mount, open_tree,
};

use super::error::SetupError;
use crate::disk::{Kind, Resolved};

/// `struct mount_attr` of mount_setattr(2) (libc does not define it).
#[repr(C)]
pub struct MountAttr {
    pub attr_set: u64,
    pub attr_clr: u64,
    pub propagation: u64,
    pub userns_fd: u64,
}

pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;

/// mount_setattr(2) on the mount (tree, with `recursive`) at the descriptor `fd`.
pub fn set_attr(fd: &OwnedFd, attr: &MountAttr, recursive: bool) -> std::io::Result<()> {
    let flags = libc::AT_EMPTY_PATH | if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: mount_setattr reads `attr` (its size is given) and the empty path; the
    // descriptor is open for the whole call. The result is checked.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn err(step: &str, path: &str, e: impl Into<std::io::Error>) -> SetupError {
    SetupError::io(step, Some(path), &e.into())
}

/// The path of `p` inside the container, as components below its root.
fn inside(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            // `..` stops at the container's root, as the kernel does inside it.
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

fn open_in(root: &OwnedFd, p: &Path, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    crate::sys::open_in_root(root, p, flags)
}

/// Makes `rel` exist under `root`, resolved as inside the container: missing directories
/// (and, with `file`, a last component that is an empty file) are created; a symlink that
/// points at nothing gets what it points to made, inside the container.
fn ensure(
    root: &OwnedFd,
    root_path: &Path,
    rel: &Path,
    file: bool,
    depth: u32,
) -> Result<(), SetupError> {
    let shown = format!("/{}", rel.display());
    if depth > 40 {
        return Err(err("resolve mount target", &shown, rustix::io::Errno::LOOP));
    }
    let n = rel.components().count();
    let mut prefix = PathBuf::new();
    for (i, c) in rel.components().enumerate() {
        let parent = prefix.clone();
        prefix.push(c);
        if open_in(root, &prefix, OFlags::PATH).is_ok() {
            continue;
        }
        let dir = open_in(root, &parent, OFlags::PATH | OFlags::DIRECTORY)
            .map_err(|e| err("resolve mount target", &shown, e))?;
        let last = i == n - 1;
        let name = c.as_os_str();
        let made = if file && last {
            rustix::fs::openat(
                &dir,
                name,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            )
            .map(drop)
        } else {
            rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755))
        };
        match made {
            Ok(()) => continue,
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(err("create mount target", &shown, e)),
        }
        // There, but it does not resolve: a dangling symlink. Make its destination, found
        // from where the parent really is inside the container.
        let link = rustix::fs::readlinkat(&dir, name, Vec::new())
            .map_err(|e| err("resolve mount target", &shown, e))?;
        let real_parent = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))
            .map_err(|e| err("resolve mount target", &shown, e))?;
        let real_parent = real_parent
            .strip_prefix(root_path)
            .unwrap_or(Path::new(""))
            .to_path_buf();
        let link = PathBuf::from(std::ffi::OsStr::from_bytes(link.as_bytes()));
        let dest = if link.is_absolute() {
            inside(&link)
        } else {
            inside(&real_parent.join(link))
        };
        ensure(root, root_path, &dest, file && last, depth + 1)?;
        open_in(root, &prefix, OFlags::PATH).map_err(|e| err("resolve mount target", &shown, e))?;
    }
    Ok(())
}

/// Opens `target` (absolute, inside the container) under `root`, resolved as inside the
/// container, making what is missing: directories, and for a file source an empty file.
fn open_target(
    root: &OwnedFd,
    root_path: &Path,
    target: &str,
    file: bool,
) -> Result<OwnedFd, SetupError> {
    let rel = inside(Path::new(target));
    ensure(root, root_path, &rel, file, 0)?;
    open_in(root, &rel, OFlags::PATH).map_err(|e| err("open mount target", target, e))
}

/// Makes each of `mounts` on the container's root at `root` (before pivot_root).
pub fn apply(root: &Path, mounts: &[Resolved]) -> Result<(), SetupError> {
    if mounts.is_empty() {
        return Ok(());
    }
    let rootfd: OwnedFd = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err("open root", &root.display().to_string(), e))?;
    // The root as the kernel names it, to tell where a resolved directory is inside it.
    let real_root = fs::read_link(format!("/proc/self/fd/{}", rootfd.as_raw_fd()))
        .unwrap_or_else(|_| root.to_path_buf());
    let root = real_root.as_path();
    let mut caches = 0;
    for m in mounts {
        let tree = match &m.kind {
            Kind::Bind { source, fill } => {
                let src = source.display().to_string();
                let is_file = fs::metadata(source).is_ok_and(|md| !md.is_dir());
                if let Some(mark) = fill {
                    fill_from_image(&rootfd, &m.target, source, mark)?;
                }
                let tree = open_tree(
                    rustix::fs::CWD,
                    source,
                    OpenTreeFlags::OPEN_TREE_CLONE
                        | OpenTreeFlags::OPEN_TREE_CLOEXEC
                        | OpenTreeFlags::AT_RECURSIVE,
                )
                .map_err(|e| err("open bind source", &src, e))?;
                // The host's mounts below the source come along, private to the container
                // unless the file asks for propagation.
                let propagation = match m.propagation.as_deref() {
                    Some("shared" | "rshared") => libc::MS_SHARED,
                    Some("slave" | "rslave") => libc::MS_SLAVE,
                    _ => libc::MS_PRIVATE,
                };
                let attr = MountAttr {
                    attr_set: if m.read_only { MOUNT_ATTR_RDONLY } else { 0 },
                    attr_clr: 0,
                    propagation,
                    userns_fd: 0,
                };
                set_attr(&tree, &attr, true).map_err(|e| err("set bind mount flags", &src, e))?;
                let target = open_target(&rootfd, root, &m.target, is_file)?;
                (tree, target)
            }
            Kind::Block { device } => {
                let dev = device.display().to_string();
                let fs = fsopen("ext4", FsOpenFlags::FSOPEN_CLOEXEC)
                    .map_err(|e| err("open ext4", &dev, e))?;
                fsconfig_set_string(&fs, "source", &dev)
                    .map_err(|e| err("ext4 source", &dev, e))?;
                fsconfig_create(&fs).map_err(|e| err("mount private disk", &dev, e))?;
                let mut attrs =
                    MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV;
                if m.read_only {
                    attrs |= MountAttrFlags::MOUNT_ATTR_RDONLY;
                }
                let tree = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)
                    .map_err(|e| err("mount private disk", &dev, e))?;
                let target = open_target(&rootfd, root, &m.target, false)?;
                (tree, target)
            }
            Kind::Overlay { lower, cache } => {
                let low = lower.display().to_string();
                // The write cache: a tmpfs of this run's, mounted in the container's mount
                // namespace only, beside its root (out of the container's sight).
                let dir = root
                    .parent()
                    .unwrap_or(root)
                    .join(format!("cache-{caches}"));
                caches += 1;
                let c = dir.display().to_string();
                fs::create_dir_all(&dir).map_err(|e| err("create shared disk cache", &c, e))?;
                nix::mount::mount(
                    Some("tmpfs"),
                    &dir,
                    Some("tmpfs"),
                    nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                    Some(format!("size={cache},mode=0755").as_str()),
                )
                .map_err(|e| err("mount shared disk cache", &c, std::io::Error::from(e)))?;
                for d in ["upper", "work"] {
                    fs::create_dir(dir.join(d))
                        .map_err(|e| err("create shared disk cache", &c, e))?;
                }
                let fs = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
                    .map_err(|e| err("open overlay", &low, e))?;
                for (k, v) in [
                    ("lowerdir", low.clone()),
                    ("upperdir", format!("{c}/upper")),
                    ("workdir", format!("{c}/work")),
                ] {
                    fsconfig_set_string(&fs, k, v)
                        .map_err(|e| err("configure shared disk", &low, e))?;
                }
                fsconfig_create(&fs).map_err(|e| err("mount shared disk", &low, e))?;
                let mut attrs =
                    MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV;
                if m.read_only {
                    attrs |= MountAttrFlags::MOUNT_ATTR_RDONLY;
                }
                let tree = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)
                    .map_err(|e| err("mount shared disk", &low, e))?;
                let target = open_target(&rootfd, root, &m.target, false)?;
                (tree, target)
            }
            Kind::Tmpfs { size, mode } => {
                let fs = fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC)
                    .map_err(|e| err("open tmpfs", &m.target, e))?;
                if let Some(s) = size {
                    fsconfig_set_string(&fs, "size", s.to_string())
                        .map_err(|e| err("size tmpfs", &m.target, e))?;
                }
                let mode = format!("{:o}", mode.unwrap_or(0o1777));
                fsconfig_set_string(&fs, "mode", mode)
                    .map_err(|e| err("mode tmpfs", &m.target, e))?;
                fsconfig_create(&fs).map_err(|e| err("create tmpfs", &m.target, e))?;
                let mut attrs = MountAttrFlags::MOUNT_ATTR_NOSUID
                    | MountAttrFlags::MOUNT_ATTR_NODEV
                    | MountAttrFlags::MOUNT_ATTR_NOEXEC;
                if m.read_only {
                    attrs |= MountAttrFlags::MOUNT_ATTR_RDONLY;
                }
                let tree = fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)
                    .map_err(|e| err("mount tmpfs", &m.target, e))?;
                let target = open_target(&rootfd, root, &m.target, false)?;
                (tree, target)
            }
        };
        let (tree, target) = tree;
        move_mount(
            tree.as_fd(),
            "",
            target.as_fd(),
            "",
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
        )
        .map_err(|e| err("attach mount", &m.target, e))?;
    }
    Ok(())
}

/// A fresh volume starts with what the image has at its target, as Docker does: copied
/// (modes, owners and symlinks kept, symlinks not followed) into the volume, once.
fn fill_from_image(
    root: &OwnedFd,
    target: &str,
    volume: &Path,
    mark: &Path,
) -> Result<(), SetupError> {
    let rel = inside(Path::new(target));
    let empty = fs::read_dir(volume)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false);
    if empty && let Ok(dir) = open_in(root, &rel, OFlags::RDONLY | OFlags::DIRECTORY) {
        // The resolved directory, by its descriptor: what lies below is walked without
        // following a symlink (each is copied as one).
        let from = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        crate::disk::copy_tree(&from, volume)
            .map_err(|e| err("fill volume from the image", target, e))?;
        // The volume's root takes the mode and owner of the image's directory too.
        if let Ok(md) = fs::metadata(&from) {
            let _ = fs::set_permissions(volume, fs::Permissions::from_mode(md.mode() & 0o7777));
            let _ = std::os::unix::fs::lchown(volume, Some(md.uid()), Some(md.gid()));
        }
        drop(dir);
    }
    fs::write(mark, b"").map_err(|e| err("mark volume filled", &mark.display().to_string(), e))
}
