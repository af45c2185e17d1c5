//! Writing a project archive (module doc of `portable`). The caller decides what goes in and
//! when (the CLI pauses running services around the volumes and disks); this writes members,
//! hashing on the way, and the manifest last.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::{
    DiskEntry, EntryKind, EntryMeta, HEADER, Header, MANIFEST, Manifest, PortableError, Sum,
    TreeSum, hash_entry, io_err, sparse_header,
};
use crate::image::{Digest, ImageStore};

/// Writes one archive. `progress` hears of every content byte written.
pub struct Exporter<'p, W: Write> {
    tar: tar::Builder<W>,
    manifest: Manifest,
    progress: &'p dyn Fn(u64),
    /// Files never to put in (the archive being written, when it lies in the project).
    skip: HashSet<(u64, u64)>,
    /// Tree roots left out because a directory above them is a symlink.
    linked: Vec<PathBuf>,
}

/// A reader of exactly `left` bytes of `inner` that hashes and counts them: a file that
/// shrank while it was read is an error, not a short member that corrupts the stream.
struct Exact<'a, R> {
    inner: R,
    left: u64,
    hasher: &'a mut Sha256,
    progress: &'a dyn Fn(u64),
}

impl<R: Read> Read for Exact<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was exported",
            ));
        }
        self.hasher.update(&buf[..n]);
        self.left -= n as u64;
        (self.progress)(n as u64);
        Ok(n)
    }
}

fn gnu_header(kind: tar::EntryType, md: &std::fs::Metadata, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(md.mode() & 0o7777);
    h.set_uid(u64::from(md.uid()));
    h.set_gid(u64::from(md.gid()));
    h.set_mtime(u64::try_from(md.mtime()).unwrap_or(0));
    h.set_size(size);
    h
}

fn plain_header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_mtime(0);
    h
}

impl<'p, W: Write> Exporter<'p, W> {
    /// Starts an archive: writes its header member.
    pub fn new(out: W, header: &Header, progress: &'p dyn Fn(u64)) -> Result<Self, PortableError> {
        let mut e = Exporter {
            tar: tar::Builder::new(out),
            manifest: Manifest {
                format: header.format.clone(),
                version: header.version,
                project: header.project.clone(),
                ..Manifest::default()
            },
            progress,
            skip: HashSet::new(),
            linked: Vec::new(),
        };
        let bytes = serde_json::to_vec_pretty(header).unwrap_or_default();
        e.small(HEADER, &bytes)?;
        Ok(e)
    }

    /// The tree roots left out because a directory above them is a symlink.
    pub fn left_out(&self) -> &[PathBuf] {
        &self.linked
    }

    /// Never puts the file with this (device, inode) in.
    pub fn skip_file(&mut self, dev: u64, ino: u64) {
        self.skip.insert((dev, ino));
    }

    fn small(&mut self, name: &str, bytes: &[u8]) -> Result<(), PortableError> {
        self.tar
            .append_data(&mut plain_header(bytes.len() as u64), name, bytes)
            .map_err(PortableError::Write)?;
        self.manifest.members.insert(
            name.to_string(),
            Sum {
                size: bytes.len() as u64,
                sha256: Digest::of(bytes),
            },
        );
        Ok(())
    }

    /// Writes the images `refs` as an OCI layout under `images/`.
    pub fn images(&mut self, store: &ImageStore, refs: &[String]) -> Result<(), PortableError> {
        if refs.is_empty() {
            return Ok(());
        }
        let progress = self.progress;
        let members = &mut self.manifest.members;
        store.save_into(refs, &mut self.tar, "images/", false, &mut |m| {
            progress(m.size);
            members.insert(
                m.name.clone(),
                Sum {
                    size: m.size,
                    sha256: m.digest.clone(),
                },
            );
        })?;
        Ok(())
    }

    /// Writes a tree as the section `name` (`project`, `volumes/<n>`): under `base`, the
    /// paths `roots` (relative; an empty one is `base` itself, with everything under it), each
    /// with the directories above it. Symlinks are kept as links and never followed; hard
    /// links stay hard links; devices, fifos and sockets are left out (their count is
    /// returned).
    pub fn tree(
        &mut self,
        name: &str,
        base: &Path,
        roots: &[PathBuf],
    ) -> Result<usize, PortableError> {
        let mut w = TreeWalk {
            section: name,
            hasher: Sha256::new(),
            sum: TreeSum {
                entries: 0,
                bytes: 0,
                sha256: Digest::of(b""),
            },
            links: std::collections::HashMap::new(),
            done: HashSet::new(),
            skipped: 0,
        };
        let mut roots: Vec<PathBuf> = roots.to_vec();
        roots.sort();
        roots.dedup();
        // A root inside another root is written with it (the empty root is `base` itself).
        let nested: Vec<bool> = roots
            .iter()
            .map(|r| roots.iter().any(|o| o != r && r.starts_with(o)))
            .collect();
        for (r, nested) in roots.iter().zip(nested) {
            if nested {
                continue;
            }
            // The directories above a root, so they keep their modes and owners. One that is
            // a symlink is carried as the symlink; what is beyond it is not the project's
            // directory tree, and is not followed.
            let mut above = PathBuf::new();
            let comps: Vec<_> = r.components().collect();
            let mut through_link = false;
            for c in comps.iter().take(comps.len().saturating_sub(1)) {
                above.push(c);
                let link = std::fs::symlink_metadata(base.join(&above))
                    .is_ok_and(|m| m.file_type().is_symlink());
                if w.done.insert(above.clone()) {
                    self.entry(&mut w, base, &above, false)?;
                }
                if link {
                    through_link = true;
                    break;
                }
            }
            if through_link {
                self.linked.push(r.clone());
                continue;
            }
            self.entry(&mut w, base, r, true)?;
        }
        w.sum.sha256 = Digest::from_hasher(w.hasher);
        self.manifest.trees.insert(name.to_string(), w.sum);
        Ok(w.skipped)
    }

    /// Writes one entry of a tree, and everything under it when `recurse`.
    fn entry(
        &mut self,
        w: &mut TreeWalk,
        base: &Path,
        rel: &Path,
        recurse: bool,
    ) -> Result<(), PortableError> {
        let path = if rel.as_os_str().is_empty() {
            base.to_path_buf()
        } else {
            base.join(rel)
        };
        let md = std::fs::symlink_metadata(&path).map_err(io_err("read", &path))?;
        if self.skip.contains(&(md.dev(), md.ino())) {
            return Ok(());
        }
        let rel_s = rel.to_string_lossy().into_owned();
        let member = if rel_s.is_empty() {
            format!("{}/", w.section)
        } else {
            format!("{}/{rel_s}", w.section)
        };
        let ft = md.file_type();
        let meta = |kind, size, link| EntryMeta {
            rel: &rel_s,
            kind,
            mode: md.mode(),
            uid: u64::from(md.uid()),
            gid: u64::from(md.gid()),
            mtime: u64::try_from(md.mtime()).unwrap_or(0),
            size,
            link,
        };
        w.sum.entries += 1;
        if ft.is_dir() {
            hash_entry(&mut w.hasher, &meta(EntryKind::Dir, 0, ""));
            let mut h = gnu_header(tar::EntryType::Directory, &md, 0);
            self.tar
                .append_data(&mut h, &member, io::empty())
                .map_err(PortableError::Write)?;
            if recurse {
                let mut names: Vec<_> = std::fs::read_dir(&path)
                    .map_err(io_err("list", &path))?
                    .map(|e| e.map(|e| e.file_name()))
                    .collect::<Result<_, _>>()
                    .map_err(io_err("list", &path))?;
                names.sort();
                for n in names {
                    self.entry(w, base, &rel.join(n), true)?;
                }
            }
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(io_err("read the link", &path))?;
            let t = target.to_string_lossy().into_owned();
            hash_entry(&mut w.hasher, &meta(EntryKind::Symlink, 0, &t));
            let mut h = gnu_header(tar::EntryType::Symlink, &md, 0);
            self.tar
                .append_link(&mut h, &member, &target)
                .map_err(PortableError::Write)?;
        } else if ft.is_file() {
            if md.nlink() > 1 {
                if let Some(first) = w.links.get(&(md.dev(), md.ino())) {
                    let first = first.clone();
                    hash_entry(&mut w.hasher, &meta(EntryKind::Hardlink, 0, &first));
                    let mut h = gnu_header(tar::EntryType::Link, &md, 0);
                    self.tar
                        .append_link(&mut h, &member, format!("{}/{first}", w.section))
                        .map_err(PortableError::Write)?;
                    return Ok(());
                }
                w.links.insert((md.dev(), md.ino()), rel_s.clone());
            }
            hash_entry(&mut w.hasher, &meta(EntryKind::File, md.len(), ""));
            let f = File::open(&path).map_err(io_err("open", &path))?;
            let mut h = gnu_header(tar::EntryType::Regular, &md, md.len());
            let r = Exact {
                inner: f,
                left: md.len(),
                hasher: &mut w.hasher,
                progress: self.progress,
            };
            self.tar
                .append_data(&mut h, &member, r)
                .map_err(|e| match e.kind() {
                    io::ErrorKind::UnexpectedEof => PortableError::Io {
                        step: "read",
                        path: path.clone(),
                        source: e,
                    },
                    _ => PortableError::Write(e),
                })?;
            w.sum.bytes += md.len();
        } else {
            w.sum.entries -= 1;
            w.skipped += 1;
        }
        Ok(())
    }

    /// Writes the private disk image `img` as `disks/<n>.img`: its length and its data
    /// extents (holes are found with SEEK_DATA/SEEK_HOLE and not written).
    pub fn disk(&mut self, img: &Path, entry: &DiskEntry) -> Result<(), PortableError> {
        let mut f = File::open(img).map_err(io_err("open the disk image", img))?;
        let len = f
            .metadata()
            .map_err(io_err("read the disk image", img))?
            .len();
        let extents = data_extents(&f, len).map_err(io_err("map the disk image", img))?;
        let head = sparse_header(len, &extents);
        let total = head.len() as u64 + extents.iter().map(|(_, l)| l).sum::<u64>();
        let name = format!("disks/{}.img", entry.n);
        let mut hasher = Sha256::new();
        let reader = ExtentReader {
            file: &mut f,
            extents: &extents,
            at: 0,
            left: 0,
        };
        let r = Exact {
            inner: io::Cursor::new(head).chain(reader),
            left: total,
            hasher: &mut hasher,
            progress: self.progress,
        };
        self.tar
            .append_data(&mut plain_header(total), &name, r)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => PortableError::Io {
                    step: "read the disk image",
                    path: img.to_path_buf(),
                    source: e,
                },
                _ => PortableError::Write(e),
            })?;
        self.manifest.members.insert(
            name,
            Sum {
                size: total,
                sha256: Digest::from_hasher(hasher),
            },
        );
        Ok(())
    }

    /// Writes the manifest and ends the archive.
    pub fn finish(mut self) -> Result<W, PortableError> {
        let bytes = serde_json::to_vec_pretty(&self.manifest).unwrap_or_default();
        self.tar
            .append_data(
                &mut plain_header(bytes.len() as u64),
                MANIFEST,
                bytes.as_slice(),
            )
            .map_err(PortableError::Write)?;
        let mut w = self.tar.into_inner().map_err(PortableError::Write)?;
        w.flush().map_err(PortableError::Write)?;
        Ok(w)
    }
}

struct TreeWalk<'s> {
    section: &'s str,
    hasher: Sha256,
    sum: TreeSum,
    links: std::collections::HashMap<(u64, u64), String>,
    done: HashSet<PathBuf>,
    skipped: usize,
}

/// The data extents of `f` (offset, length), from SEEK_DATA/SEEK_HOLE; a file system without
/// them reports the whole file as data, which is still right.
fn data_extents(f: &File, len: u64) -> io::Result<Vec<(u64, u64)>> {
    use rustix::fs::{SeekFrom, seek};
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        let start = match seek(f, SeekFrom::Data(pos)) {
            Ok(s) => s,
            // ENXIO: no data after `pos`.
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        if start >= len {
            break;
        }
        let end = seek(f, SeekFrom::Hole(start))?.min(len);
        out.push((start, end - start));
        pos = end;
    }
    Ok(out)
}

/// Reads the extents of a file one after the other.
struct ExtentReader<'a> {
    file: &'a mut File,
    extents: &'a [(u64, u64)],
    at: usize,
    left: u64,
}

impl Read for ExtentReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::io::{Seek, SeekFrom};
        while self.left == 0 {
            let Some(&(off, len)) = self.extents.get(self.at) else {
                return Ok(0);
            };
            self.at += 1;
            self.file.seek(SeekFrom::Start(off))?;
            self.left = len;
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Bytes of data (not holes) in the disk image `img`.
pub fn disk_data(img: &Path) -> io::Result<u64> {
    let f = File::open(img)?;
    let len = f.metadata()?.len();
    Ok(data_extents(&f, len)?.iter().map(|(_, l)| l).sum())
}

/// Flushes to its image the private disk a running container has mounted at `target`, so
/// the image read from the host is the file system as its (frozen) processes left it. The
/// mount is reached through the container's root with openat2(RESOLVE_IN_ROOT), so a symlink
/// the container made cannot point the sync elsewhere, and it must be the file system on
/// `device` (the disk's loop device).
pub fn sync_mounted(pid: i32, target: &str, device: &Path) -> io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    use std::os::unix::fs::MetadataExt;
    let root = rustix::fs::open(
        format!("/proc/{pid}/root"),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let fd = crate::sys::open_in_root(&root, target, OFlags::RDONLY | OFlags::DIRECTORY)?;
    let want = std::fs::metadata(device)?.rdev();
    let st = rustix::fs::fstat(&fd)?;
    if st.st_dev as u64 != want {
        return Err(io::Error::other(format!(
            "{target} in the container is not the disk's file system"
        )));
    }
    rustix::fs::syncfs(&fd)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_below_a_symlinked_directory_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside/conf");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), "host data").unwrap();
        let proj = t.path().join("proj");
        std::fs::create_dir_all(&proj).unwrap();
        std::fs::write(proj.join("compose.yaml"), "services: {}\n").unwrap();
        std::os::unix::fs::symlink(t.path().join("outside"), proj.join("data")).unwrap();
        let header = Header {
            format: crate::portable::FORMAT.into(),
            version: crate::portable::VERSION,
            project: "p".into(),
            files: vec!["compose.yaml".into()],
            created: 0,
            berth: String::new(),
            images: Vec::new(),
            volumes: Vec::new(),
            disks: Vec::new(),
        };
        let mut e = Exporter::new(Vec::new(), &header, &|_| {}).unwrap();
        e.tree(
            "project",
            &proj,
            &[PathBuf::from("compose.yaml"), PathBuf::from("data/conf")],
        )
        .unwrap();
        assert_eq!(e.left_out(), &[PathBuf::from("data/conf")]);
        let bytes = e.finish().unwrap();
        let mut a = tar::Archive::new(bytes.as_slice());
        let names: Vec<(String, tar::EntryType)> = a
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().entry_type(),
                )
            })
            .collect();
        assert!(
            names.contains(&("project/data".into(), tar::EntryType::Symlink)),
            "{names:?}"
        );
        assert!(
            !names.iter().any(|(n, _)| n.contains("secret")),
            "{names:?}"
        );
    }
}
