//! What the supervisor needs of the machine besides its containers: the project files (loading
//! them, watching them, their fingerprint) and giving memory back after a burst of work. The
//! system's implementation is `System`; the supervisor's unit tests drive it through a fake
//! that loads what the test says and reports an edit when the test makes one.

use std::path::{Path, PathBuf};

use super::Target;
use crate::state::ProjectRecord;

/// A change the watcher saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A project file (or its `.env`) was saved.
    Files,
    /// Another berth process acted on the project (its events file changed).
    Activity,
}

/// Told of each change the watcher sees (called on the watcher's own thread).
pub type OnChange = Box<dyn Fn(Change) + Send + Sync>;

pub trait Host: Send + Sync + 'static {
    /// Loads the project the record describes, as an edit is loaded: the message is the
    /// error the user reads (file:line: key).
    fn load(&self, record: &ProjectRecord) -> Result<Target, String>;
    /// A fingerprint of the files: equal when none of them changed.
    fn fingerprint(&self, files: &[PathBuf]) -> String;
    /// Watches `files` and the project's events file; the watch lasts as long as what it
    /// returns (None: it could not, and the supervisor polls instead).
    fn watch(
        &self,
        files: &[PathBuf],
        events: &Path,
        on: OnChange,
    ) -> Option<Box<dyn std::any::Any + Send>>;
    /// After a burst of work: gives back the memory its code and data no longer need.
    fn release_memory(&self);
}

/// The machine berth runs on.
pub struct System;

impl Host for System {
    fn load(&self, record: &ProjectRecord) -> Result<Target, String> {
        super::supervisor::load_in_supervisor(record)
    }

    fn fingerprint(&self, files: &[PathBuf]) -> String {
        super::idle::fingerprint(files)
    }

    fn watch(
        &self,
        files: &[PathBuf],
        events: &Path,
        on: OnChange,
    ) -> Option<Box<dyn std::any::Any + Send>> {
        use notify::Watcher;
        let wanted = files.to_vec();
        let activity = events.to_path_buf();
        let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            let Ok(ev) = ev else { return };
            if ev.kind.is_access() {
                return;
            }
            if ev.paths.iter().any(|p| wanted.contains(p)) {
                on(Change::Files);
            } else if ev.paths.contains(&activity) {
                on(Change::Activity);
            }
        })
        .map_err(|e| super::supervisor::log(format!("cannot watch the project files: {e}")))
        .ok()?;
        // Editors save by writing a new file and renaming it over the old one: watch the
        // directories, and pick the files out of their events.
        let mut dirs: Vec<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(|p| p.to_path_buf()))
            .collect();
        if let Some(d) = events.parent() {
            let _ = std::fs::create_dir_all(d);
            dirs.push(d.to_path_buf());
        }
        dirs.sort();
        dirs.dedup();
        for d in dirs {
            if let Err(e) = w.watch(&d, notify::RecursiveMode::NonRecursive) {
                super::supervisor::log(format!("cannot watch {}: {e}", d.display()));
            }
        }
        Some(Box::new(w))
    }

    fn release_memory(&self) {
        super::supervisor::release_cold_code();
    }
}
