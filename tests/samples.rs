//! Every sample and example loads; `berth config` output loads again to the same project with
//! the same hashes; and the JSON Schema accepts every file as written.

mod common;

use std::sync::Arc;

use berth::plan::config_hash;
use berth::spec::{self, node, schema};
use common::*;

#[test]
fn at_least_forty_samples() {
    let n = sample_dirs()
        .iter()
        .filter(|d| d.starts_with(repo().join("compose-samples")))
        .count();
    assert!(n >= 40, "only {n} samples");
}

#[test]
fn every_sample_loads_and_round_trips() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut failures = Vec::new();
    for dir in sample_dirs() {
        let loaded = match berth::load_project(&opts_for(&dir)) {
            Ok(p) => p,
            Err(e) => {
                failures.push(format!("{}:\n{e}", dir.display()));
                continue;
            }
        };
        let project = &loaded.loaded.project;
        assert!(
            !project.services.is_empty(),
            "{}: no services",
            dir.display()
        );
        let text = spec::to_yaml(project);
        let out = tmp.path().join("out.yaml");
        std::fs::write(&out, &text).expect("write");
        let mut o = opts_for(&dir);
        o.files = vec![out.clone()];
        let again = match berth::load_project(&o) {
            Ok(p) => p,
            Err(e) => {
                failures.push(format!("{} (reloaded output):\n{e}\n{text}", dir.display()));
                continue;
            }
        };
        let project2 = &again.loaded.project;
        if project != project2 {
            failures.push(format!(
                "{}: output does not load to the same project\n--- first\n{text}\n--- second\n{}",
                dir.display(),
                spec::to_yaml(project2)
            ));
            continue;
        }
        for (name, svc) in &project.services {
            let h1 = config_hash(svc, &loaded.loaded.project_dir);
            let h2 = config_hash(&project2.services[name], &again.loaded.project_dir);
            assert_eq!(h1, h2, "{}: hash of {name} changed", dir.display());
        }
        // Loading twice gives the same hashes (no randomness, no time).
        let third = berth::load_project(&opts_for(&dir)).expect("second load");
        assert_eq!(&third.loaded.project, project);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn schema_accepts_every_file_as_written() {
    let mut failures = Vec::new();
    for dir in sample_dirs() {
        for f in yaml_files(&dir) {
            let text = std::fs::read_to_string(&f).expect("read");
            let name: Arc<str> = Arc::from(f.to_string_lossy().as_ref());
            let tree = match node::parse(&name, &text) {
                Ok(Some(t)) => t,
                Ok(None) => continue,
                Err(e) => {
                    failures.push(format!("{e}"));
                    continue;
                }
            };
            // Only project files: the samples also carry their apps' own YAML configs.
            if tree.get("services").is_none() {
                continue;
            }
            let d = schema::validate(&tree);
            if !d.is_empty() {
                failures.push(format!("{}:\n{d}", f.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// An idle supervisor hands its project over to itself as JSON (`reconcile::idle::Handoff`):
/// every sample comes back the same project, with the same configuration hashes (a service
/// whose hash changed across an idle spell would be recreated for nothing).
#[test]
fn every_sample_survives_an_idle_spell() {
    for dir in sample_dirs() {
        let Ok(loaded) = berth::load_project(&opts_for(&dir)) else {
            continue; // every_sample_loads_and_round_trips reports it
        };
        let project = &loaded.loaded.project;
        let h = berth::reconcile::idle::Handoff {
            project: project.clone(),
            dir: loaded.loaded.project_dir.clone(),
            files: String::new(),
            watches: Default::default(),
            ports: Vec::new(),
            dns: Vec::new(),
        };
        let json = serde_json::to_vec(&h).expect("serialise");
        let back: berth::reconcile::idle::Handoff =
            serde_json::from_slice(&json).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        assert_eq!(&back.project, project, "{}", dir.display());
        assert_eq!(
            berth::plan::config_hashes(&back.project, &back.dir),
            berth::plan::config_hashes(project, &loaded.loaded.project_dir),
            "{}",
            dir.display()
        );
        berth::graph::Graph::new(&back.project).expect("the same graph");
    }
}
