//! `berth cp`: files between a running container and the host, as `docker compose cp`.
//!
//! The container's side is reached through its init's root (`/proc/<pid>/root`, which shows
//! the container's own mount namespace: its volumes and disks too) and every path inside it
//! is resolved with openat2(RESOLVE_IN_ROOT), then walked one component at a time with
//! O_NOFOLLOW: a symlink in the container cannot send a copy out of it onto the host's files
//! (CVE-2018-15664, CVE-2019-14271 in `docker cp`).

use std::fs::{self, File};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use rustix::fs::{Mode, OFlags};

use super::Global;
use super::lifecycle::select;

#[derive(Debug, Args)]
pub struct CpArgs {
    /// `SERVICE:PATH` or a host path (`-`: a tar stream on standard output, from a container)
    pub source: String,
    /// `SERVICE:PATH` or a host path
    pub destination: String,
    /// The replica, when the service has several
    #[arg(long, default_value_t = 1)]
    pub index: u32,
    /// Follow a symlink given as the source
    #[arg(short = 'L', long)]
    pub follow_link: bool,
    /// Keep owners (uid and gid) as they are in the source
    #[arg(short, long)]
    pub archive: bool,
}

/// `SERVICE:PATH` -> (service, path), for a name with no `/` before its `:`.
fn container_side(arg: &str) -> Option<(&str, &str)> {
    let (s, p) = arg.split_once(':')?;
    (!s.is_empty() && !s.contains('/')).then_some((s, p))
}

pub fn run(g: &Global, a: &CpArgs) -> anyhow::Result<i32> {
    let (from, to) = (container_side(&a.source), container_side(&a.destination));
    let (service, inside, outward) = match (from, to) {
        (Some(_), Some(_)) => {
            bail!("copying between two containers is not supported; copy through the host")
        }
        (None, None) => bail!(
            "neither `{}` nor `{}` names a container: write one as SERVICE:PATH",
            a.source,
            a.destination
        ),
        (Some((s, p)), None) => (s, p, true),
        (None, Some((s, p))) => (s, p, false),
    };
    let sel = select(g, &[service.to_string()])?;
    let Some(c) = sel.containers.iter().find(|c| c.index == a.index) else {
        bail!("service {service} has no container {}", a.index);
    };
    let pid = c
        .pid
        .filter(|_| c.state == crate::plan::State::Running || c.state == crate::plan::State::Paused)
        .with_context(|| format!("container {} is not running (berth cp reaches a container through its processes: start it first)", c.name))?;
    let root = rustix::fs::open(
        format!("/proc/{pid}/root"),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening the root of {}", c.name))?;
    let shown = format!("{}:{inside}", c.name);
    if outward {
        copy_out(&root, inside, &a.destination, a, &shown)?;
    } else {
        copy_in(&root, &a.source, inside, a, &shown)?;
    }
    Ok(0)
}

/// The parent directory and last component of a path inside the container.
fn split_inside(path: &str) -> (String, String) {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        Some((p, n)) => (p.to_string(), n.to_string()),
        None => (String::new(), trimmed.to_string()),
    }
}

/// Opens `rel` inside the container's root, symlinks resolved in it (the last one too when
/// `follow`), as O_PATH.
fn open_inside(root: &OwnedFd, rel: &str, follow: bool) -> rustix::io::Result<OwnedFd> {
    let mut flags = OFlags::PATH;
    if !follow {
        flags |= OFlags::NOFOLLOW;
    }
    crate::sys::open_in_root(root, rel, flags)
}

fn copy_in(root: &OwnedFd, src: &str, dest: &str, a: &CpArgs, shown: &str) -> anyhow::Result<()> {
    if src == "-" {
        bail!(
            "copying a tar stream from standard input into a container is not supported yet; give a host path"
        );
    }
    if a.archive {
        bail!(
            "-a keeps owners when copying out of a container; copied in, files belong to the container's root, as with docker cp"
        );
    }
    let contents_only = src.ends_with("/.");
    let src_path = Path::new(src);
    let md = if a.follow_link {
        fs::metadata(src_path)
    } else {
        fs::symlink_metadata(src_path)
    }
    .with_context(|| format!("{src}: no such file or directory on the host"))?;
    let from = if a.follow_link {
        fs::canonicalize(src_path).unwrap_or_else(|_| src_path.to_path_buf())
    } else {
        src_path.to_path_buf()
    };
    let root_owned = Some((0, 0));
    if md.is_dir() && contents_only {
        // `DIR/.`: what is in it, into `dest` (made if missing).
        let target = crate::build::exec::mkdir_in_root(root, dest)
            .with_context(|| format!("{shown}: opening or creating it"))?;
        for e in fs::read_dir(&from).with_context(|| format!("reading {src}"))? {
            let p = e?.path();
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            crate::build::exec::copy_entry(&p, &target, &name, root_owned, None)
                .with_context(|| format!("copying {} to {shown}", p.display()))?;
        }
        return Ok(());
    }
    // As docker cp: into an existing directory under the source's name, else as `dest`.
    let existing = open_inside(root, dest, true).ok();
    let dest_is_dir = existing
        .as_ref()
        .and_then(|fd| rustix::fs::fstat(fd).ok())
        .is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
    let (parent, name) = if dest_is_dir {
        let base = from
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        (dest.trim_end_matches('/').to_string(), base)
    } else {
        if existing.is_some() && md.is_dir() {
            bail!("cannot copy the directory {src} over the file {shown}");
        }
        split_inside(dest)
    };
    let dir = crate::build::exec::mkdir_in_root(root, &parent)
        .with_context(|| format!("{shown}: opening its directory"))?;
    crate::build::exec::copy_entry(&from, &dir, &name, root_owned, None)
        .with_context(|| format!("copying {src} to {shown}"))
}

fn copy_out(root: &OwnedFd, src: &str, dest: &str, a: &CpArgs, shown: &str) -> anyhow::Result<()> {
    let contents_only = src.ends_with("/.");
    let fd = open_inside(root, src, a.follow_link)
        .with_context(|| format!("{shown}: no such file or directory in the container"))?;
    let st = rustix::fs::fstat(&fd)?;
    let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
    let (_, base) = split_inside(src);
    if dest == "-" {
        if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            bail!("refusing to write a tar stream to a terminal; redirect standard output");
        }
        let mut tar = tar::Builder::new(std::io::BufWriter::new(std::io::stdout().lock()));
        let name = if base.is_empty() || contents_only {
            ".".to_string()
        } else {
            base
        };
        tar_out(&fd, &name, &mut tar, a.archive)?;
        tar.into_inner()?.flush()?;
        return Ok(());
    }
    let dest_path = Path::new(dest);
    let target: PathBuf = if dest_path.is_dir() && !(contents_only && is_dir) {
        dest_path.join(if base.is_empty() { "root".into() } else { base })
    } else {
        dest_path.to_path_buf()
    };
    if is_dir && target.exists() && !target.is_dir() {
        bail!(
            "cannot copy the directory {shown} over the file {}",
            target.display()
        );
    }
    write_out(&fd, &target, a.archive)
        .with_context(|| format!("copying {shown} to {}", target.display()))
}

/// An fd of `name` in directory `dir` that can be read, never following a symlink.
fn open_child(dir: &impl AsFd, name: &str, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Reopens an O_PATH fd for reading (through /proc/self/fd, which opens the same inode).
fn reopen(fd: &OwnedFd, flags: OFlags) -> std::io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    Ok(rustix::fs::open(
        format!("/proc/self/fd/{}", fd.as_raw_fd()),
        flags | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The names in directory `dir`, sorted, without `.` and `..`.
fn sorted_names(dir: &OwnedFd) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for e in rustix::fs::Dir::read_from(dir)? {
        let n = e?.file_name().to_string_lossy().into_owned();
        if n != "." && n != ".." {
            names.push(n);
        }
    }
    names.sort();
    Ok(names)
}

/// Writes the entry `fd` (O_PATH) of the container to the host path `to`, recursively.
fn write_out(fd: &OwnedFd, to: &Path, archive: bool) -> std::io::Result<()> {
    let st = rustix::fs::fstat(fd)?;
    let kind = st.st_mode & libc::S_IFMT;
    let mode = st.st_mode & 0o7777;
    if kind == libc::S_IFLNK {
        let target = rustix::fs::readlinkat(fd, "", Vec::new())?;
        let _ = fs::remove_file(to);
        std::os::unix::fs::symlink(target.to_string_lossy().as_ref(), to)?;
        if archive {
            std::os::unix::fs::lchown(to, Some(st.st_uid), Some(st.st_gid))?;
        }
        return Ok(());
    }
    if kind == libc::S_IFDIR {
        // A real directory of the host, never one reached through a symlink that is there
        // (an earlier copy may have made it from the container's own symlink).
        match fs::symlink_metadata(to) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                fs::remove_file(to)?;
                fs::create_dir(to)?;
            }
            Err(_) => fs::create_dir(to)?,
        }
        let dir = reopen(fd, OFlags::RDONLY | OFlags::DIRECTORY)?;
        for n in sorted_names(&dir)? {
            let child = open_child(&dir, &n, OFlags::PATH)?;
            write_out(&child, &to.join(&n), archive)?;
        }
        fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    } else if kind == libc::S_IFREG {
        let mut src = File::from(reopen(fd, OFlags::RDONLY)?);
        let _ = fs::remove_file(to);
        let mut out = File::create_new(to)?;
        std::io::copy(&mut src, &mut out)?;
        out.set_permissions(fs::Permissions::from_mode(mode))?;
    } else {
        // Devices, fifos and sockets are the container's, not files to copy.
        return Ok(());
    }
    if archive {
        std::os::unix::fs::lchown(to, Some(st.st_uid), Some(st.st_gid))?;
    }
    Ok(())
}

/// Appends the entry `fd` (O_PATH) as `name` to `tar`, recursively.
fn tar_out<W: Write>(
    fd: &OwnedFd,
    name: &str,
    tar: &mut tar::Builder<W>,
    archive: bool,
) -> std::io::Result<()> {
    let st = rustix::fs::fstat(fd)?;
    let kind = st.st_mode & libc::S_IFMT;
    let mut h = tar::Header::new_gnu();
    h.set_mode(st.st_mode & 0o7777);
    let (uid, gid) = if archive {
        (st.st_uid, st.st_gid)
    } else {
        (0, 0)
    };
    h.set_uid(u64::from(uid));
    h.set_gid(u64::from(gid));
    h.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
    if kind == libc::S_IFLNK {
        let target = rustix::fs::readlinkat(fd, "", Vec::new())?;
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        tar.append_link(&mut h, name, target.to_string_lossy().as_ref())?;
    } else if kind == libc::S_IFDIR {
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        tar.append_data(&mut h, format!("{name}/"), std::io::empty())?;
        let dir = reopen(fd, OFlags::RDONLY | OFlags::DIRECTORY)?;
        for n in sorted_names(&dir)? {
            let child = open_child(&dir, &n, OFlags::PATH)?;
            tar_out(&child, &format!("{name}/{n}"), tar, archive)?;
        }
    } else if kind == libc::S_IFREG {
        use std::io::Read;
        let size = u64::try_from(st.st_size).unwrap_or(0);
        // Exactly the size the header says, whatever the file does meanwhile (a log that
        // grows, or shrinks: then zeros), or the stream would be corrupt.
        let f = File::from(reopen(fd, OFlags::RDONLY)?)
            .take(size)
            .chain(std::io::repeat(0))
            .take(size);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(size);
        tar.append_data(&mut h, name, f)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_side_is_the_container() {
        assert_eq!(
            container_side("web:/etc/hosts"),
            Some(("web", "/etc/hosts"))
        );
        assert_eq!(container_side("./a:b"), None);
        assert_eq!(container_side("/tmp/x:y"), None);
        assert_eq!(container_side("plain"), None);
        assert_eq!(split_inside("/a/b/"), ("/a".into(), "b".into()));
        assert_eq!(split_inside("f"), ("".into(), "f".into()));
    }
}
