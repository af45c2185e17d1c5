//! `image: host` and images built `FROM host`: which of the host's directories they show, and
//! how such an image is marked.

use std::fs;
use std::path::{Path, PathBuf};

/// The image label that marks an image built `FROM host`.
pub const HOST_BASE_LABEL: &str = "org.berth.base";

/// The host's OS directories that `image: host` shows (DESIGN, "Images"). Everything else of the
/// host (home directories, /root, /var, /srv, /opt, berth's state root...) is not there.
pub const HOST_DIRS: [&str; 9] = [
    "usr", "etc", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "libexec",
];

/// The host's OS directories that are symlinks (`bin -> usr/bin` on a merged-/usr host), as
/// (name, target): a build's COPY into an image `FROM host` makes them first, so a copy to
/// `/bin/x` lands in `usr/bin` as it would at run time.
pub fn symlinked_dirs() -> Vec<(&'static str, PathBuf)> {
    HOST_DIRS
        .into_iter()
        .filter_map(|name| {
            let p = Path::new("/").join(name);
            fs::symlink_metadata(&p)
                .ok()
                .filter(|m| m.file_type().is_symlink())
                .and_then(|_| fs::read_link(&p).ok())
                .map(|t| (name, t))
        })
        .collect()
}
