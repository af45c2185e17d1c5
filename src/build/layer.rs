//! A build step's layer: what a step's container wrote to its overlayfs upper directory, as
//! an OCI layer tar. overlayfs records deletions its own way and OCI layers another, so the
//! walk converts them: a whiteout (a character device 0:0) becomes an empty `.wh.NAME`, and
//! a directory marked opaque (`trusted.overlay.opaque=y`) is followed by `.wh..wh..opq`.
//! Entries are written in name order, and hard links inside the layer stay hard links.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Whether `path` (a directory of the upper layer) is marked opaque by overlayfs.
fn opaque(path: &Path) -> bool {
    let mut buf = [0u8; 4];
    rustix::fs::lgetxattr(path, "trusted.overlay.opaque", &mut buf)
        .is_ok_and(|n| n >= 1 && buf[0] == b'y')
}

/// A whiteout entry: an empty file. Written with `append_data`, which adds a GNU long-name
/// entry for a path over 100 bytes (deep `node_modules` paths reach that).
fn empty_file<W: Write>(tar: &mut tar::Builder<W>, name: &Path) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(0);
    h.set_mode(0o644);
    // Every numeric field set: a NUL-filled one does not parse (the import refuses it).
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    tar.append_data(&mut h, name, io::empty())
}

/// The extended attributes of `path` that belong in a layer, as PAX `SCHILY.xattr.*`
/// records (as Docker writes them): file capabilities (`setcap` in a `RUN`), `user.*` and
/// the like; overlayfs's own `trusted.overlay.*` and SELinux labels (the host's policy) are
/// left out.
fn carried_xattrs(path: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut names = vec![0u8; 4096];
    let n = match rustix::fs::llistxattr(path, &mut names) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let key = String::from_utf8_lossy(name).into_owned();
        if key.starts_with("trusted.overlay.") || key == "security.selinux" {
            continue;
        }
        let mut value = vec![0u8; 65536];
        let len = match rustix::fs::lgetxattr(path, name, &mut value) {
            Ok(len) => len,
            // Removed meanwhile.
            Err(rustix::io::Errno::NODATA) => continue,
            Err(e) => return Err(e.into()),
        };
        value.truncate(len);
        out.push((format!("SCHILY.xattr.{key}"), value));
    }
    Ok(out)
}

/// Writes the changes in `upper` to `out` as a layer tar; returns how many entries it wrote.
pub fn upper_to_tar(upper: &Path, out: impl Write) -> io::Result<usize> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut n = 0;
    walk(upper, Path::new(""), &mut tar, &mut links, &mut n)?;
    tar.into_inner()?.flush()?;
    Ok(n)
}

fn walk<W: Write>(
    dir: &Path,
    rel: &Path,
    tar: &mut tar::Builder<W>,
    links: &mut HashMap<(u64, u64), PathBuf>,
    n: &mut usize,
) -> io::Result<()> {
    let mut names: Vec<_> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let rel_path = rel.join(&name);
        let md = fs::symlink_metadata(&path)?;
        let ft = md.file_type();
        if ft.is_char_device() && md.rdev() == 0 {
            // An overlayfs whiteout: the lower file is deleted.
            let wh = rel.join(format!(".wh.{}", name.to_string_lossy()));
            empty_file(tar, &wh)?;
            *n += 1;
            continue;
        }
        if ft.is_file() && md.nlink() > 1 {
            if let Some(first) = links.get(&(md.dev(), md.ino())) {
                let mut h = tar::Header::new_gnu();
                h.set_metadata(&md);
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                tar.append_link(&mut h, &rel_path, first)?;
                *n += 1;
                continue;
            }
            links.insert((md.dev(), md.ino()), rel_path.clone());
        }
        let xattrs = carried_xattrs(&path)?;
        if !xattrs.is_empty() {
            tar.append_pax_extensions(xattrs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        }
        tar.append_path_with_name(&path, &rel_path)?;
        *n += 1;
        if ft.is_dir() {
            if opaque(&path) {
                empty_file(tar, &rel_path.join(".wh..wh..opq"))?;
                *n += 1;
            }
            walk(&path, &rel_path, tar, links, n)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteouts_opaque_dirs_and_hard_links_become_oci_entries() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: whiteouts need root (mknod, trusted.* xattrs)");
            return;
        }
        let t = tempfile::tempdir().expect("tempdir");
        let up = t.path();
        fs::create_dir_all(up.join("etc/conf.d")).unwrap();
        fs::write(up.join("etc/motd"), b"hello").unwrap();
        fs::hard_link(up.join("etc/motd"), up.join("etc/motd.bak")).unwrap();
        std::os::unix::fs::symlink("motd", up.join("etc/issue")).unwrap();
        nix::sys::stat::mknod(
            &up.join("etc/gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            0,
        )
        .unwrap();
        rustix::fs::setxattr(
            up.join("etc/conf.d"),
            "trusted.overlay.opaque",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        rustix::fs::setxattr(
            up.join("etc/motd"),
            "user.berth-test",
            b"kept",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        let mut bytes = Vec::new();
        let n = upper_to_tar(up, &mut bytes).unwrap();
        {
            let mut a = tar::Archive::new(bytes.as_slice());
            let motd = a
                .entries()
                .unwrap()
                .map(|e| e.unwrap())
                .find(|e| e.path().unwrap().ends_with("etc/motd"))
                .map(|mut e| {
                    e.pax_extensions()
                        .unwrap()
                        .into_iter()
                        .flatten()
                        .map(|p| {
                            let p = p.unwrap();
                            (p.key().unwrap().to_string(), p.value_bytes().to_vec())
                        })
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            assert!(
                motd.contains(&("SCHILY.xattr.user.berth-test".to_string(), b"kept".to_vec())),
                "{motd:?}"
            );
        }
        let mut a = tar::Archive::new(bytes.as_slice());
        let entries: Vec<(String, tar::EntryType, Option<String>)> = a
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                // Every numeric field parses (the store refuses a layer whose do not).
                let h = e.header();
                assert!(
                    h.uid().is_ok() && h.gid().is_ok() && h.mtime().is_ok() && h.mode().is_ok()
                );
                (
                    e.path()
                        .unwrap()
                        .to_string_lossy()
                        .trim_end_matches('/')
                        .to_string(),
                    e.header().entry_type(),
                    e.link_name()
                        .unwrap()
                        .map(|l| l.to_string_lossy().into_owned()),
                )
            })
            .collect();
        assert_eq!(n, entries.len());
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "etc",
                "etc/conf.d",
                "etc/conf.d/.wh..wh..opq",
                "etc/.wh.gone",
                "etc/issue",
                "etc/motd",
                "etc/motd.bak"
            ]
        );
        assert_eq!(entries[4].1, tar::EntryType::Symlink);
        assert_eq!(entries[4].2.as_deref(), Some("motd"));
        assert_eq!(entries[6].1, tar::EntryType::Link);
        assert_eq!(entries[6].2.as_deref(), Some("etc/motd"));
    }
}
