//! berth: a daemonless, compose-style orchestrator for one Linux host, with its own runtime.
//!
//! The flow (see DESIGN.md): `spec` (project files → typed `Project`) → `graph` (dependency DAG)
//! → `plan` (desired vs observed → actions) → reconcile → `runtime` (the kernel).

pub mod build;
pub mod cli;
pub mod disk;
pub mod graph;
pub mod image;
pub mod net;
pub mod plan;
pub mod portable;
pub mod reconcile;
pub mod runtime;
pub mod spec;
pub mod state;
pub mod support;
pub mod sys;

use spec::{Diagnostics, LoadError, LoadOptions, Loaded};

/// A loaded project with its dependency graph: what every verb starts from.
#[derive(Debug, Clone)]
pub struct Project {
    pub loaded: Loaded,
    pub graph: graph::Graph,
}

/// Loads the project, validates it, and builds its dependency graph. Every problem found in
/// the file(s), dependency cycles included, is reported together.
pub fn load_project(opts: &LoadOptions) -> Result<Project, LoadError> {
    let loaded = spec::load(opts)?;
    let mut errors: Diagnostics = loaded.errors.clone();
    let graph = match graph::Graph::new(&loaded.project) {
        Ok(g) => Some(g),
        Err(cycles) => {
            errors
                .0
                .extend(graph::cycle_diagnostics(&cycles, &loaded.tree).0);
            None
        }
    };
    match graph {
        Some(graph) if errors.is_empty() => Ok(Project { loaded, graph }),
        _ => Err(LoadError::Invalid(errors.finish())),
    }
}
