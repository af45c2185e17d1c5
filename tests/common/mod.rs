#![allow(dead_code)]
//! Helpers shared by the loader tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use berth::spec::LoadOptions;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Options that read nothing from the test process: an empty shell environment, and the
/// repository as the working directory (so error positions print as repo-relative paths).
pub fn opts_for(dir: &Path) -> LoadOptions {
    LoadOptions {
        project_directory: Some(dir.to_path_buf()),
        environ: BTreeMap::new(),
        cwd: repo(),
        ..LoadOptions::default()
    }
}

/// Every sample and example project directory.
pub fn sample_dirs() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for top in ["compose-samples", "examples"] {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(repo().join(top))
            .expect("sample directory")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        out.extend(dirs);
    }
    out
}

/// Every YAML file under a directory, recursively.
pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml") | Some("yml")
            ) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
