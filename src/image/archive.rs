//! Reading an image tarball (docker-save or OCI image layout, plain or gzip) into a staging
//! directory. A gzip stream cannot be read out of order and docker-save writes its
//! `manifest.json` last, so the tarball is read once, every member copied to a numbered file
//! (hashed on the way), and the formats are interpreted afterwards from the staged members.
//! Member names are only map keys: nothing is ever created at a path the tarball chose.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use super::ImageError;
use super::digest::{Digest, HashWriter};

/// JSON documents (manifests, configs, indexes) are read into memory; nothing honest is
/// anywhere near this large.
const MAX_JSON: u64 = 16 << 20;

/// A staged member of the tarball.
#[derive(Debug, Clone)]
pub struct Member {
    pub file: PathBuf,
    pub digest: Digest,
    pub size: u64,
}

#[derive(Debug)]
pub struct Staged {
    pub tarball: PathBuf,
    members: HashMap<String, Member>,
    /// Symlink and hardlink members (docker 25+ writes `<id>/layer.tar` as a symlink to
    /// `blobs/sha256/...`), resolved to archive paths.
    links: HashMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Sniffs the compression of a stream from its magic bytes.
pub fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Opens `path` and returns a reader of its decompressed content.
pub fn open_decompressed(path: &Path) -> io::Result<(Box<dyn Read>, Compression)> {
    let mut r = BufReader::with_capacity(256 << 10, File::open(path)?);
    let kind = sniff(r.fill_buf()?);
    let reader: Box<dyn Read> = match kind {
        // The tar reader asks for 512-byte headers and small files; the decoder is much
        // faster fed large reads.
        Compression::Gzip => Box::new(BufReader::with_capacity(
            256 << 10,
            flate2::bufread::MultiGzDecoder::new(r),
        )),
        _ => Box::new(r),
    };
    Ok((reader, kind))
}

/// Lexically normalizes an archive path: drops `.` and empty components, resolves `..`
/// (never above the archive root).
fn normalize(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

impl Staged {
    /// Members already in files (a pull's downloads), by their archive-style names; `origin`
    /// names where they came from in messages.
    pub fn from_members(origin: PathBuf, members: HashMap<String, Member>) -> Staged {
        Staged {
            tarball: origin,
            members,
            links: HashMap::new(),
        }
    }

    /// Reads `tarball` into `dir` (which must exist and be empty).
    pub fn read(tarball: &Path, dir: &Path) -> Result<Staged, ImageError> {
        let open_err = |source| ImageError::OpenTarball {
            path: tarball.to_path_buf(),
            source,
        };
        let read_err = |source| ImageError::ReadTarball {
            path: tarball.to_path_buf(),
            source,
        };
        let (reader, kind) = open_decompressed(tarball).map_err(open_err)?;
        if kind == Compression::Zstd {
            return Err(ImageError::BadFormat {
                path: tarball.to_path_buf(),
                what: "zstd-compressed tarballs are not supported; decompress it first".into(),
            });
        }
        let mut staged = Staged {
            tarball: tarball.to_path_buf(),
            members: HashMap::new(),
            links: HashMap::new(),
        };
        let mut archive = tar::Archive::new(reader);
        for (n, entry) in archive.entries().map_err(read_err)?.enumerate() {
            let mut entry = entry.map_err(read_err)?;
            let name = normalize(&String::from_utf8_lossy(&entry.path_bytes()));
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let file = dir.join(format!("m{n}"));
                    let out = File::create_new(&file).map_err(|source| ImageError::Store {
                        op: "create a staging file",
                        path: file.clone(),
                        source,
                    })?;
                    let mut w = HashWriter::new(io::BufWriter::with_capacity(256 << 10, out));
                    io::copy(&mut entry, &mut w).map_err(read_err)?;
                    let (w, digest, size) = w.finish();
                    w.into_inner()
                        .map_err(|e| e.into_error())
                        .map_err(|source| ImageError::Store {
                            op: "write a staging file",
                            path: file.clone(),
                            source,
                        })?;
                    if size != entry.size() {
                        return Err(ImageError::TruncatedMember {
                            path: tarball.to_path_buf(),
                            member: name,
                            expected: entry.size(),
                            got: size,
                        });
                    }
                    staged.members.insert(name, Member { file, digest, size });
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let Some(target) = entry.link_name_bytes() else {
                        continue;
                    };
                    let target = String::from_utf8_lossy(&target).into_owned();
                    let resolved = if entry.header().entry_type() == tar::EntryType::Symlink {
                        let base = name.rsplit_once('/').map_or("", |(d, _)| d);
                        normalize(&format!("{base}/{target}"))
                    } else {
                        normalize(&target)
                    };
                    staged.links.insert(name, resolved);
                }
                _ => {}
            }
        }
        Ok(staged)
    }

    /// The member at `path`, following member links.
    pub fn member(&self, path: &str) -> Option<&Member> {
        let mut p = normalize(path);
        for _ in 0..16 {
            if let Some(m) = self.members.get(&p) {
                return Some(m);
            }
            p = self.links.get(&p)?.clone();
        }
        None
    }

    pub fn has(&self, path: &str) -> bool {
        self.member(path).is_some()
    }

    /// The member at `path`, or an error saying what referenced it.
    pub fn require(&self, path: &str, referenced_by: &str) -> Result<&Member, ImageError> {
        self.member(path).ok_or_else(|| ImageError::MissingMember {
            path: self.tarball.clone(),
            member: path.to_string(),
            referenced_by: referenced_by.to_string(),
        })
    }

    /// The blob `digest` of an OCI layout (`blobs/sha256/<hex>`), checked against its digest
    /// and, when the descriptor gives one, its size.
    pub fn blob(
        &self,
        digest: &Digest,
        size: Option<i64>,
        referenced_by: &str,
    ) -> Result<&Member, ImageError> {
        let path = format!("blobs/sha256/{}", digest.hex());
        let m = self.require(&path, referenced_by)?;
        check_member(&path, m, digest)?;
        if let Some(size) = size
            && size >= 0
            && u64::try_from(size).ok() != Some(m.size)
        {
            return Err(ImageError::SizeMismatch {
                blob: path,
                expected: size,
                actual: m.size,
            });
        }
        Ok(m)
    }

    /// Reads a JSON document member.
    pub fn json<T: serde::de::DeserializeOwned>(
        &self,
        member_name: &str,
        m: &Member,
    ) -> Result<(T, Vec<u8>), ImageError> {
        let bytes = self.read_small(member_name, m)?;
        let doc = serde_json::from_slice(&bytes).map_err(|source| ImageError::BadJson {
            path: self.tarball.clone(),
            member: member_name.to_string(),
            source,
        })?;
        Ok((doc, bytes))
    }

    pub fn read_small(&self, member_name: &str, m: &Member) -> Result<Vec<u8>, ImageError> {
        if m.size > MAX_JSON {
            return Err(ImageError::BadFormat {
                path: self.tarball.clone(),
                what: format!(
                    "`{member_name}` is {} bytes, too large for a JSON document",
                    m.size
                ),
            });
        }
        std::fs::read(&m.file).map_err(|source| ImageError::Store {
            op: "read a staging file",
            path: m.file.clone(),
            source,
        })
    }
}

/// When a member's name is a digest (`blobs/sha256/<hex>`, docker-save's `<hex>.json`), its
/// content must hash to it.
pub fn check_named_member(path: &str, m: &Member) -> Result<(), ImageError> {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.strip_suffix(".json").unwrap_or(file);
    match Digest::from_hex(stem) {
        Some(d) => check_member(path, m, &d),
        None => Ok(()),
    }
}

fn check_member(path: &str, m: &Member, digest: &Digest) -> Result<(), ImageError> {
    if &m.digest != digest {
        return Err(ImageError::DigestMismatch {
            blob: path.to_string(),
            expected: digest.to_string(),
            actual: m.digest.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_member_paths() {
        assert_eq!(normalize("./blobs//sha256/x"), "blobs/sha256/x");
        assert_eq!(normalize("abc/../blobs/sha256/x"), "blobs/sha256/x");
        assert_eq!(normalize("../../x"), "x");
    }
}
