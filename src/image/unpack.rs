//! Unpacking one layer tar into a directory that overlayfs will use as a lower layer.
//!
//! A layer is untrusted input unpacked as root, so every entry is created relative to a
//! directory fd that was itself reached one component at a time with `O_NOFOLLOW |
//! O_DIRECTORY`: no symlink is ever followed, whether the layer planted it earlier
//! (`a -> /etc`, then `a/passwd`; the class of CVE-2018-15664, CVE-2019-14271) or not, and `..`
//! and absolute names are refused outright rather than cleaned, since no honest layer writer
//! produces them.
//!
//! Whiteouts are converted to overlayfs' own format, because the unpacked layers are mounted
//! as overlay lower dirs (Documentation/filesystems/overlayfs.rst, "whiteouts and opaque
//! directories"): `.wh.NAME` becomes a 0:0 character device `NAME`, and `.wh..wh..opq` the
//! xattr `trusted.overlay.opaque=y` on its directory.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{
    AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags, makedev,
};
use rustix::io::Errno;
use tar::EntryType;

use super::ImageError;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Other `.wh..wh.` names are aufs bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`), not content.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What unpacking a layer found.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unpacked {
    /// Bytes of regular file content written.
    pub content_bytes: u64,
    pub entries: u64,
}

/// Unpacks the tar stream `reader` into the existing, empty directory `dest`. `layer` names
/// the layer in errors. The caller hashes the stream to check the layer's DiffID, so this
/// reads only up to the tar's end-of-archive marker.
pub fn unpack_layer(reader: impl Read, dest: &Path, layer: &str) -> Result<Unpacked, ImageError> {
    let root = rustix::fs::open(
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ImageError::Unpack {
        layer: layer.to_string(),
        entry: dest.display().to_string(),
        step: "open the layer directory",
        source: e.into(),
    })?;
    let mut u = Unpacker {
        root,
        layer,
        is_root: rustix::process::geteuid().is_root(),
        dir_times: Vec::new(),
        out: Unpacked::default(),
    };
    let mut archive = tar::Archive::new(reader);
    let read_err = |source| ImageError::ReadLayer {
        layer: layer.to_string(),
        source,
    };
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        u.entry(&mut entry)?;
        u.out.entries += 1;
    }
    u.finish_dirs();
    Ok(u.out)
}

struct Unpacker<'a> {
    root: OwnedFd,
    layer: &'a str,
    is_root: bool,
    /// Directory mtimes, set once all entries are written, since writing into a directory
    /// changes its mtime.
    dir_times: Vec<(Vec<Vec<u8>>, Timestamps)>,
    out: Unpacked,
}

/// The metadata of an entry, with PAX overrides applied.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    times: Timestamps,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Unpacker<'_> {
    fn unsafe_entry(&self, entry: &[u8], reason: &'static str) -> ImageError {
        ImageError::UnsafeEntry {
            layer: self.layer.to_string(),
            entry: String::from_utf8_lossy(entry).into_owned(),
            reason,
        }
    }

    fn io_err(&self, entry: &[u8], step: &'static str) -> impl Fn(Errno) -> ImageError {
        let layer = self.layer.to_string();
        let entry = String::from_utf8_lossy(entry).into_owned();
        move |e| ImageError::Unpack {
            layer: layer.clone(),
            entry: entry.clone(),
            step,
            source: e.into(),
        }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ImageError> {
        let raw = entry.path_bytes().into_owned();
        let comps = components(&raw).map_err(|reason| self.unsafe_entry(&raw, reason))?;
        let Some((name, parents)) = comps.split_last() else {
            // The layer's root itself (`./`): the overlay's root comes from the container.
            return Ok(());
        };
        let kind = entry.header().entry_type();
        let meta = self.meta(entry, &raw)?;

        if name.starts_with(WHITEOUT_PREFIX) {
            let parent = self.open_dir(parents, true, &raw)?;
            if name.as_slice() == OPAQUE_MARKER {
                return rustix::fs::fsetxattr(&parent, OPAQUE_XATTR, b"y", XattrFlags::empty())
                    .map_err(self.io_err(&raw, "set the overlay opaque xattr"));
            }
            if name.starts_with(AUFS_META_PREFIX) {
                return Ok(());
            }
            let target = &name[WHITEOUT_PREFIX.len()..];
            if target.is_empty() || target == b"." || target == b".." {
                return Err(self.unsafe_entry(&raw, "whiteout of an invalid name"));
            }
            self.remove_existing(&parent, target, false, &raw)?;
            rustix::fs::mknodat(
                &parent,
                target,
                FileType::CharacterDevice,
                Mode::empty(),
                makedev(0, 0),
            )
            .map_err(self.io_err(&raw, "create the overlay whiteout device"))?;
            return Ok(());
        }

        let parent = self.open_dir(parents, true, &raw)?;
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.remove_existing(&parent, name, false, &raw)?;
                let mut file = crate::support::create_new_at(&parent, name.as_slice())
                    .map_err(self.io_err(&raw, "create the file"))?;
                let written = io::copy(entry, &mut file).map_err(|source| ImageError::Unpack {
                    layer: self.layer.to_string(),
                    entry: String::from_utf8_lossy(&raw).into_owned(),
                    step: "write the file's content",
                    source,
                })?;
                if kind != EntryType::GNUSparse && written != entry.size() {
                    return Err(ImageError::Unpack {
                        layer: self.layer.to_string(),
                        entry: String::from_utf8_lossy(&raw).into_owned(),
                        step: "read the file's content",
                        source: io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!(
                                "the layer ends after {written} of the file's {} bytes",
                                entry.size()
                            ),
                        ),
                    });
                }
                self.out.content_bytes += written;
                self.apply_fd(&file, &meta, &raw)?;
            }
            EntryType::Directory => {
                let existing = self.remove_existing(&parent, name, true, &raw)?;
                if !existing {
                    rustix::fs::mkdirat(&parent, name.as_slice(), Mode::from_raw_mode(0o700))
                        .map_err(self.io_err(&raw, "create the directory"))?;
                }
                let dir = rustix::fs::openat(
                    &parent,
                    name.as_slice(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(self.io_err(&raw, "open the directory"))?;
                let times = meta.times.clone();
                self.apply_fd(&dir, &meta, &raw)?;
                self.dir_times.push((comps.clone(), times));
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.unsafe_entry(&raw, "symlink without a target"))?
                    .into_owned();
                self.remove_existing(&parent, name, false, &raw)?;
                rustix::fs::symlinkat(target.as_slice(), &parent, name.as_slice())
                    .map_err(self.io_err(&raw, "create the symlink"))?;
                self.apply_at(&parent, name, &meta, true, &raw)?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.unsafe_entry(&raw, "hardlink without a target"))?
                    .into_owned();
                let tcomps =
                    components(&target).map_err(|reason| self.unsafe_entry(&raw, reason))?;
                let Some((tname, tparents)) = tcomps.split_last() else {
                    return Err(self.unsafe_entry(&raw, "hardlink to the layer root"));
                };
                if tcomps == comps {
                    return Ok(());
                }
                let tparent = self.open_dir(tparents, false, &raw)?;
                self.remove_existing(&parent, name, false, &raw)?;
                // Without AT_SYMLINK_FOLLOW, linkat links a symlink itself, never its target.
                rustix::fs::linkat(
                    &tparent,
                    tname.as_slice(),
                    &parent,
                    name.as_slice(),
                    AtFlags::empty(),
                )
                .map_err(self.io_err(
                    &raw,
                    "create the hardlink (its target must come earlier in the same layer)",
                ))?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let ft = match kind {
                    EntryType::Char => FileType::CharacterDevice,
                    EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let h = entry.header();
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                self.remove_existing(&parent, name, false, &raw)?;
                rustix::fs::mknodat(
                    &parent,
                    name.as_slice(),
                    ft,
                    Mode::from_raw_mode(0o600),
                    makedev(major, minor),
                )
                .map_err(self.io_err(&raw, "create the device node"))?;
                self.apply_at(&parent, name, &meta, false, &raw)?;
            }
            // Long-name and PAX headers are folded into the next entry by the tar crate;
            // anything else (volume labels, multi-volume parts) carries no content.
            other => {
                tracing::debug!(layer = self.layer, entry = %String::from_utf8_lossy(&raw), ?other, "skipping tar entry of unsupported type");
            }
        }
        Ok(())
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>, raw: &[u8]) -> Result<Meta, ImageError> {
        let bad = |what: &'static str| self.unsafe_entry(raw, what);
        let h = entry.header();
        let mode = h.mode().map_err(|_| bad("unreadable mode"))? & 0o7777;
        let mut uid = h.uid().map_err(|_| bad("unreadable uid"))?;
        let mut gid = h.gid().map_err(|_| bad("unreadable gid"))?;
        let mut mtime = (h.mtime().map_err(|_| bad("unreadable mtime"))? as i64, 0i64);
        let mut xattrs = Vec::new();
        if let Some(pax) = entry
            .pax_extensions()
            .map_err(|_| bad("unreadable PAX header"))?
        {
            for ext in pax {
                let ext = ext.map_err(|_| bad("unreadable PAX header"))?;
                let Ok(key) = ext.key() else { continue };
                let value = ext.value_bytes();
                let num = || std::str::from_utf8(value).ok()?.parse::<u64>().ok();
                match key {
                    "uid" => uid = num().ok_or_else(|| bad("bad PAX uid"))?,
                    "gid" => gid = num().ok_or_else(|| bad("bad PAX gid"))?,
                    "mtime" => {
                        mtime = std::str::from_utf8(value)
                            .ok()
                            .and_then(parse_pax_time)
                            .ok_or_else(|| bad("bad PAX mtime"))?
                    }
                    _ => {
                        if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                            // overlayfs' own xattrs would let a layer redirect lookups to
                            // other paths (`redirect`, `metacopy`); only berth sets them.
                            if !name.starts_with("trusted.overlay.") {
                                xattrs.push((name.to_string(), value.to_vec()));
                            }
                        }
                    }
                }
            }
        }
        let uid = u32::try_from(uid).map_err(|_| bad("uid out of range"))?;
        let gid = u32::try_from(gid).map_err(|_| bad("gid out of range"))?;
        let ts = Timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1 as _,
        };
        Ok(Meta {
            mode,
            uid,
            gid,
            times: Timestamps {
                last_access: ts,
                last_modification: ts,
            },
            xattrs,
        })
    }

    /// Opens the directory `comps` below the layer root, one component at a time, never
    /// following a symlink. Missing directories are created when `create` (a layer need not
    /// list every parent).
    fn open_dir(&self, comps: &[Vec<u8>], create: bool, raw: &[u8]) -> Result<OwnedFd, ImageError> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut cur = rustix::fs::openat(&self.root, ".", flags, Mode::empty())
            .map_err(self.io_err(raw, "open the layer directory"))?;
        for c in comps {
            let next = match rustix::fs::openat(&cur, c.as_slice(), flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    rustix::fs::mkdirat(&cur, c.as_slice(), Mode::from_raw_mode(0o755))
                        .map_err(self.io_err(raw, "create a parent directory"))?;
                    rustix::fs::openat(&cur, c.as_slice(), flags, Mode::empty())
                        .map_err(self.io_err(raw, "open a parent directory"))?
                }
                Err(Errno::NOENT) => {
                    return Err(self.unsafe_entry(raw, "its target is not in the layer"));
                }
                Err(Errno::LOOP | Errno::NOTDIR) => {
                    let st = rustix::fs::statat(&cur, c.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(self.io_err(raw, "inspect a parent directory"))?;
                    return Err(
                        if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
                            self.unsafe_entry(raw, "a parent directory is a symlink, which could lead outside the layer")
                        } else {
                            self.unsafe_entry(raw, "a parent is not a directory")
                        },
                    );
                }
                Err(e) => return Err(self.io_err(raw, "open a parent directory")(e)),
            };
            cur = next;
        }
        Ok(cur)
    }

    /// Removes what the layer put at `name` earlier, so a later entry replaces it. Returns
    /// whether a directory is there and was kept (`keep_dir`: a directory entry over an
    /// existing directory only updates its metadata).
    fn remove_existing(
        &self,
        parent: &OwnedFd,
        name: &[u8],
        keep_dir: bool,
        raw: &[u8],
    ) -> Result<bool, ImageError> {
        let st = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(self.io_err(raw, "inspect an existing entry")(e)),
        };
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            if keep_dir {
                return Ok(true);
            }
            remove_tree(parent.as_fd(), name).map_err(self.io_err(raw, "replace a directory"))?;
        } else {
            rustix::fs::unlinkat(parent, name, AtFlags::empty())
                .map_err(self.io_err(raw, "replace an existing entry"))?;
        }
        Ok(false)
    }

    fn apply_fd(&self, fd: &impl AsFd, m: &Meta, raw: &[u8]) -> Result<(), ImageError> {
        // chown before chmod: chown clears set-user-ID and set-group-ID bits.
        if self.is_root {
            rustix::fs::fchown(fd, Some(Uid::from_raw(m.uid)), Some(Gid::from_raw(m.gid)))
                .map_err(self.io_err(raw, "set the owner"))?;
        }
        rustix::fs::fchmod(fd, Mode::from_raw_mode(m.mode))
            .map_err(self.io_err(raw, "set the mode"))?;
        for (name, value) in &m.xattrs {
            match rustix::fs::fsetxattr(fd, name.as_str(), value, XattrFlags::empty()) {
                Ok(()) => {}
                Err(Errno::OPNOTSUPP) => {
                    tracing::warn!(layer = self.layer, entry = %String::from_utf8_lossy(raw), xattr = name, "filesystem does not support this xattr; skipped");
                }
                Err(e) => return Err(self.io_err(raw, "set an xattr")(e)),
            }
        }
        rustix::fs::futimens(fd, &m.times).map_err(self.io_err(raw, "set the mtime"))
    }

    fn apply_at(
        &self,
        parent: &OwnedFd,
        name: &[u8],
        m: &Meta,
        symlink: bool,
        raw: &[u8],
    ) -> Result<(), ImageError> {
        if self.is_root {
            rustix::fs::chownat(
                parent,
                name,
                Some(Uid::from_raw(m.uid)),
                Some(Gid::from_raw(m.gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(self.io_err(raw, "set the owner"))?;
        }
        // A symlink's own mode is meaningless on Linux; a device node was just made here by
        // us, so following the name cannot leave the layer.
        if !symlink {
            rustix::fs::chmodat(parent, name, Mode::from_raw_mode(m.mode), AtFlags::empty())
                .map_err(self.io_err(raw, "set the mode"))?;
        }
        if !m.xattrs.is_empty() {
            // No fd-relative l*xattr call exists; through /proc/self/fd the directory is the
            // one already opened safely, and lsetxattr does not follow `name` itself.
            let path = Path::new("/proc/self/fd")
                .join(parent.as_raw_fd().to_string())
                .join(OsStr::from_bytes(name));
            for (xname, value) in &m.xattrs {
                match rustix::fs::lsetxattr(&path, xname.as_str(), value, XattrFlags::empty()) {
                    Ok(()) => {}
                    // user.* xattrs are not allowed on symlinks and devices (EPERM).
                    Err(Errno::OPNOTSUPP | Errno::PERM) => {
                        tracing::warn!(layer = self.layer, entry = %String::from_utf8_lossy(raw), xattr = xname, "xattr not supported on this entry; skipped");
                    }
                    Err(e) => return Err(self.io_err(raw, "set an xattr")(e)),
                }
            }
        }
        rustix::fs::utimensat(parent, name, &m.times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(self.io_err(raw, "set the mtime"))
    }

    fn finish_dirs(&mut self) {
        for (comps, times) in std::mem::take(&mut self.dir_times) {
            // A later entry may have replaced the directory; then there is nothing to date.
            if let Ok(fd) = self.open_dir(&comps, false, b"") {
                let _ = rustix::fs::futimens(&fd, &times);
            }
        }
    }
}

/// Splits a tar entry name into components: `./` and empty components are dropped; absolute
/// names and `..` are refused.
fn components(raw: &[u8]) -> Result<Vec<Vec<u8>>, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("absolute path");
    }
    if raw.contains(&0) {
        return Err("NUL byte in the name");
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("`..` in the path escapes the layer root"),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

/// `1700000000.123456789` (PAX allows a fraction; tar readers round down).
fn parse_pax_time(s: &str) -> Option<(i64, i64)> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut nanos = 0i64;
    let digits: String = frac.chars().take(9).collect();
    if !digits.is_empty() {
        nanos = digits.parse::<i64>().ok()? * 10i64.pow(9 - digits.len() as u32);
    }
    Some((secs, nanos))
}

/// Removes the directory `name` below `parent` and everything in it, without following
/// symlinks (each level is opened `O_NOFOLLOW`, entries are unlinked, not resolved).
pub(crate) fn remove_tree(parent: BorrowedFd<'_>, name: &[u8]) -> Result<(), Errno> {
    let dir = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut subdirs = Vec::new();
    let mut files = Vec::new();
    for entry in rustix::fs::Dir::read_from(&dir)? {
        let entry = entry?;
        let n = entry.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        if entry.file_type() == FileType::Directory {
            subdirs.push(n.to_vec());
        } else {
            files.push(n.to_vec());
        }
    }
    for f in files {
        match rustix::fs::unlinkat(&dir, f.as_slice(), AtFlags::empty()) {
            // d_type is unknown on some filesystems; a directory reported as such fails here.
            Err(Errno::ISDIR) | Err(Errno::PERM) => subdirs.push(f),
            other => other?,
        }
    }
    for d in subdirs {
        remove_tree(dir.as_fd(), &d)?;
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_refuses_names() {
        assert_eq!(
            components(b"./a//b/./c/"),
            Ok(vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()])
        );
        assert_eq!(components(b"./"), Ok(vec![]));
        assert!(components(b"../evil").is_err());
        assert!(components(b"a/../../evil").is_err());
        assert!(components(b"/etc/passwd").is_err());
        assert_eq!(parse_pax_time("12.5"), Some((12, 500_000_000)));
        assert_eq!(parse_pax_time("12"), Some((12, 0)));
        assert_eq!(parse_pax_time("x"), None);
    }
}
