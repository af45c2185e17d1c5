//! Desired versus observed: what must be created, started, recreated, restarted or removed.
//! Pure: the observed side is plain data, so every rule here is unit-tested without a kernel.
//!
//! Recreation is decided by a hash of each service's effective configuration. The hash leaves
//! out what does not change a container (replica count, `depends_on`, profiles, pull policy),
//! and is computed over the normalized model with sorted keys, so reformatting the file,
//! reordering keys or switching between short and long syntax recreates nothing.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::graph::Graph;
use crate::spec::model::{Project, Service, hash_view};

/// The config hash of a service: sha256 of its canonical JSON, as 64 hex digits.
///
/// The JSON is the model's own serialization (struct fields in a fixed order, maps sorted),
/// seen through `hash_view`, which leaves out what does not change a container. Paths inside
/// the project directory are hashed relative to it, so the same project checked out at another
/// path, or on another machine, hashes the same.
pub fn config_hash(service: &Service, project_dir: &Path) -> String {
    config_hash_with(service, project_dir, "")
}

/// The config hash of service `name` of `project`: its own configuration, and the definitions
/// of the disks it mounts and of the secrets and configs it is given (with the digests their
/// loaders stamp in: a changed seed or secret file recreates its users).
pub fn service_hash(project: &Project, name: &str, project_dir: &Path) -> String {
    let Some(svc) = project.services.get(name) else {
        return String::new();
    };
    let disks: BTreeMap<&str, _> = svc
        .disks
        .iter()
        .filter_map(|d| project.disks.get_key_value(&d.source))
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let files = |refs: &[crate::spec::model::FileRef],
                 defs: &BTreeMap<String, crate::spec::model::FileObject>| {
        refs.iter()
            .filter_map(|r| defs.get_key_value(&r.source))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<String, crate::spec::model::FileObject>>()
    };
    let secrets = files(&svc.secrets, &project.secrets);
    let configs = files(&svc.configs, &project.configs);
    // The aliases other services' `links: [NAME:ALIAS]` give this one are part of its
    // network identity (its DNS names), so a new or removed link recreates it.
    let mut linked: Vec<&str> = project
        .services
        .values()
        .flat_map(|t| t.links.iter())
        .filter_map(|l| {
            l.split_once(':')
                .filter(|(s, _)| *s == name)
                .map(|(_, a)| a)
        })
        .collect();
    linked.sort_unstable();
    linked.dedup();
    if disks.is_empty() && secrets.is_empty() && configs.is_empty() && linked.is_empty() {
        return config_hash(svc, project_dir);
    }
    let extra = if linked.is_empty() {
        serde_json::to_string(&(&disks, &secrets, &configs)).unwrap_or_default()
    } else {
        serde_json::to_string(&(&disks, &secrets, &configs, &linked)).unwrap_or_default()
    };
    config_hash_with(svc, project_dir, &extra)
}

fn config_hash_with(service: &Service, project_dir: &Path, extra: &str) -> String {
    let mut text = hash_view(|| serde_json::to_string(service)).unwrap_or_default();
    text.push_str(extra);
    let dir = serde_json::to_string(&project_dir.to_string_lossy()).unwrap_or_default();
    // `"<dir>` as it appears at the start of a JSON string, without its closing quote.
    let prefix = dir.strip_suffix('"').unwrap_or(&dir);
    let text = if prefix.len() > 2 && text.contains(prefix) {
        text.replace(&format!("{prefix}/"), "\"./")
            .replace(&format!("{prefix}:"), "\".:")
            .replace(&format!("{prefix}\""), "\".\"")
    } else {
        text
    };
    let digest = Sha256::digest(text.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest.iter() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The config hash of every service, in service-name order. Hashing is the bulk of planning a
/// large project, and each hash is independent: big projects hash on all cores.
pub fn config_hashes(project: &Project, project_dir: &Path) -> Vec<String> {
    let services: Vec<&String> = project.services.keys().collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if services.len() < 128 || cores < 2 {
        return services
            .iter()
            .map(|s| service_hash(project, s, project_dir))
            .collect();
    }
    let chunk = services.len().div_ceil(cores);
    std::thread::scope(|scope| {
        let handles: Vec<_> = services
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|s| service_hash(project, s, project_dir))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// The state of a container as observed in the kernel and the state root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Created,
    Running,
    Paused,
    /// Exited with this status.
    Exited(i32),
    /// Killed by the kernel's OOM killer for going over its memory limit (exit status 137).
    OomKilled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedContainer {
    pub name: String,
    pub service: String,
    /// Replica number, from 1.
    pub index: u32,
    pub config_hash: String,
    pub state: State,
    /// A one-off container (`berth run`): plans leave it alone.
    #[serde(default)]
    pub oneoff: bool,
    /// The host pid of its init in its latest run (None if it never ran): tells one run of
    /// a container from the next.
    #[serde(default)]
    pub pid: Option<i32>,
}

/// What exists now, for one project.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    pub containers: Vec<ObservedContainer>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The container does not exist yet.
    Missing,
    /// More replicas are wanted than exist.
    ScaleUp,
    /// Fewer replicas are wanted than exist.
    ScaleDown,
    /// The service is no longer in the project file (or its profile is off).
    Orphan,
    /// The service's configuration changed.
    ConfigChanged,
    /// The container exists with the right configuration but is not running.
    Stopped,
    /// A dependency marked `restart: true` is being recreated.
    DependencyRestarted,
}

/// One step of a plan, for one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Create {
        service: String,
        index: u32,
        config_hash: String,
        reason: Reason,
    },
    Start {
        service: String,
        index: u32,
        name: String,
    },
    Recreate {
        service: String,
        index: u32,
        name: String,
        config_hash: String,
    },
    Restart {
        service: String,
        index: u32,
        name: String,
        reason: Reason,
    },
    Stop {
        service: String,
        index: u32,
        name: String,
    },
    Remove {
        service: String,
        index: u32,
        name: String,
        reason: Reason,
    },
}

impl Action {
    pub fn service(&self) -> &str {
        match self {
            Action::Create { service, .. }
            | Action::Start { service, .. }
            | Action::Recreate { service, .. }
            | Action::Restart { service, .. }
            | Action::Stop { service, .. }
            | Action::Remove { service, .. } => service,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub actions: Vec<Action>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// Actions grouped by service (the reconciler runs each group when its dependencies allow).
    pub fn by_service(&self) -> BTreeMap<&str, Vec<&Action>> {
        let mut m: BTreeMap<&str, Vec<&Action>> = BTreeMap::new();
        for a in &self.actions {
            m.entry(a.service()).or_default().push(a);
        }
        m
    }
}

/// The container name of replica `index` of a service (`<project>-<service>-<index>`, as
/// Compose names them), unless the file sets `container_name`.
pub fn container_name(project: &str, service: &str, svc: &Service, index: u32) -> String {
    match &svc.container_name {
        Some(n) => n.clone(),
        None => format!("{project}-{service}-{index}"),
    }
}

/// Computes the plan that takes `observed` to `desired`.
pub fn diff(desired: &Project, project_dir: &Path, graph: &Graph, observed: &Observed) -> Plan {
    let mut actions = Vec::new();
    let mut by_service: BTreeMap<&str, Vec<&ObservedContainer>> = BTreeMap::new();
    for c in observed.containers.iter().filter(|c| !c.oneoff) {
        by_service.entry(c.service.as_str()).or_default().push(c);
    }
    let mut recreated: Vec<&str> = Vec::new();
    let mut hashes = config_hashes(desired, project_dir).into_iter();
    for (name, svc) in &desired.services {
        let hash = hashes.next().unwrap_or_default();
        let want = svc.replicas();
        let have = by_service.remove(name.as_str()).unwrap_or_default();
        let mut present = BTreeMap::new();
        for c in have {
            // Two containers claiming one index (an interrupted run): keep the first, drop the rest.
            if present.contains_key(&c.index) || c.index == 0 || c.index > want {
                actions.push(Action::Remove {
                    service: name.clone(),
                    index: c.index,
                    name: c.name.clone(),
                    reason: Reason::ScaleDown,
                });
                continue;
            }
            present.insert(c.index, c);
        }
        for index in 1..=want {
            match present.get(&index) {
                None => actions.push(Action::Create {
                    service: name.clone(),
                    index,
                    config_hash: hash.clone(),
                    reason: if present.is_empty() {
                        Reason::Missing
                    } else {
                        Reason::ScaleUp
                    },
                }),
                Some(c) if c.config_hash != hash => {
                    recreated.push(name);
                    actions.push(Action::Recreate {
                        service: name.clone(),
                        index,
                        name: c.name.clone(),
                        config_hash: hash.clone(),
                    })
                }
                Some(c) if c.state != State::Running => {
                    // A one-shot job that finished well stays finished: `up` does not rerun it.
                    let done_ok = c.state == State::Exited(0)
                        && matches!(
                            svc.restart.as_ref().map(|r| r.0.as_str()),
                            None | Some("no")
                        );
                    if !done_ok {
                        actions.push(Action::Start {
                            service: name.clone(),
                            index,
                            name: c.name.clone(),
                        })
                    }
                }
                Some(_) => {}
            }
        }
    }
    for (service, cs) in by_service {
        for c in cs {
            actions.push(Action::Remove {
                service: service.to_string(),
                index: c.index,
                name: c.name.clone(),
                reason: Reason::Orphan,
            });
        }
    }
    // Dependents with `restart: true` restart when a dependency is recreated (unless they are
    // being created or recreated anyway).
    for dep in recreated {
        for (dependent, edge) in graph.dependents(dep) {
            if !edge.restart {
                continue;
            }
            let touched = actions.iter().any(|a| {
                a.service() == dependent
                    && matches!(a, Action::Create { .. } | Action::Recreate { .. })
            });
            if touched {
                continue;
            }
            for c in observed
                .containers
                .iter()
                .filter(|c| c.service == dependent)
            {
                let a = Action::Restart {
                    service: dependent.to_string(),
                    index: c.index,
                    name: c.name.clone(),
                    reason: Reason::DependencyRestarted,
                };
                if !actions.contains(&a) {
                    actions.push(a);
                }
            }
        }
    }
    Plan { actions }
}

/// The plan that stops every running container (for `stop`), dependents first.
pub fn stop_all(graph: &Graph, observed: &Observed) -> Plan {
    let mut actions = Vec::new();
    for service in graph.stop_order() {
        for c in observed
            .containers
            .iter()
            .filter(|c| c.service == service && c.state == State::Running)
        {
            actions.push(Action::Stop {
                service: service.clone(),
                index: c.index,
                name: c.name.clone(),
            });
        }
    }
    Plan { actions }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::model::Service;

    fn project(services: &[(&str, Service)]) -> Project {
        let mut p = Project {
            name: "p".into(),
            ..Project::default()
        };
        for (n, s) in services {
            p.services.insert(n.to_string(), s.clone());
        }
        p
    }

    fn svc(image: &str) -> Service {
        Service {
            image: Some(image.into()),
            ..Service::default()
        }
    }

    fn observed_for(p: &Project) -> Observed {
        let dir = Path::new("/proj");
        let mut o = Observed::default();
        for (n, s) in &p.services {
            for i in 1..=s.replicas() {
                o.containers.push(ObservedContainer {
                    name: format!("p-{n}-{i}"),
                    service: n.clone(),
                    index: i,
                    config_hash: config_hash(s, dir),
                    pid: None,
                    state: State::Running,
                    oneoff: false,
                });
            }
        }
        o
    }

    fn plan(p: &Project, o: &Observed) -> Plan {
        diff(p, Path::new("/proj"), &Graph::new(p).unwrap(), o)
    }

    #[test]
    fn converged_project_plans_nothing() {
        let p = project(&[("web", svc("nginx")), ("db", svc("postgres"))]);
        assert!(plan(&p, &observed_for(&p)).is_empty());
    }

    #[test]
    fn fresh_project_creates_everything() {
        let p = project(&[("web", svc("nginx")), ("db", svc("postgres"))]);
        let pl = plan(&p, &Observed::default());
        assert_eq!(pl.actions.len(), 2);
        assert!(pl.actions.iter().all(|a| matches!(
            a,
            Action::Create {
                reason: Reason::Missing,
                ..
            }
        )));
    }

    #[test]
    fn env_change_recreates_only_that_service() {
        let p = project(&[("web", svc("nginx")), ("db", svc("postgres"))]);
        let o = observed_for(&p);
        let mut p2 = p.clone();
        p2.services
            .get_mut("web")
            .unwrap()
            .environment
            .insert("A".into(), Some("1".into()));
        let pl = plan(&p2, &o);
        assert_eq!(pl.actions.len(), 1);
        assert!(matches!(&pl.actions[0], Action::Recreate { service, .. } if service == "web"));
    }

    #[test]
    fn scale_and_removal() {
        let mut web = svc("nginx");
        web.scale = Some(3);
        let p = project(&[("web", web.clone()), ("old", svc("x"))]);
        let o = observed_for(&p);
        web.scale = Some(1);
        let p2 = project(&[("web", web)]);
        let pl = plan(&p2, &o);
        let removes: Vec<_> = pl
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Remove { name, reason, .. } => Some((name.as_str(), *reason)),
                _ => None,
            })
            .collect();
        assert_eq!(
            removes,
            vec![
                ("p-web-2", Reason::ScaleDown),
                ("p-web-3", Reason::ScaleDown),
                ("p-old-1", Reason::Orphan)
            ]
        );
        // Replica count is not part of the hash: scaling does not recreate replica 1.
        assert!(
            !pl.actions
                .iter()
                .any(|a| matches!(a, Action::Recreate { .. }))
        );
    }

    #[test]
    fn hash_ignores_replicas_deps_profiles_pull_policy() {
        let a = svc("nginx");
        let mut b = a.clone();
        b.scale = Some(4);
        b.profiles = vec!["x".into()];
        b.pull_policy = Some("always".into());
        let dir = Path::new("/d");
        assert_eq!(config_hash(&a, dir), config_hash(&b, dir));
        b.image = Some("nginx:2".into());
        assert_ne!(config_hash(&a, dir), config_hash(&b, dir));
    }

    #[test]
    fn hash_is_independent_of_project_location() {
        let mut a = svc("x");
        a.working_dir = Some("/srv/app/data".into());
        let mut b = svc("x");
        b.working_dir = Some("/home/u/app/data".into());
        assert_eq!(
            config_hash(&a, Path::new("/srv/app")),
            config_hash(&b, Path::new("/home/u/app"))
        );
    }

    #[test]
    fn stopped_container_is_started_and_finished_job_is_left() {
        let p = project(&[("web", svc("nginx")), ("job", svc("x"))]);
        let mut o = observed_for(&p);
        o.containers[0].state = State::Exited(0); // job (sorted first)
        o.containers[1].state = State::Exited(137); // web
        let pl = plan(&p, &o);
        assert_eq!(pl.actions.len(), 1);
        assert!(matches!(&pl.actions[0], Action::Start { service, .. } if service == "web"));
    }
    #[test]
    fn a_link_alias_is_part_of_the_linked_services_hash() {
        let a = crate::net::tests::project(
            "name: p\nservices:\n  web:\n    image: x\n  mysql:\n    image: x\n",
        );
        let b = crate::net::tests::project(
            "name: p\nservices:\n  web:\n    image: x\n    links: ['mysql:db']\n  mysql:\n    image: x\n",
        );
        let dir = std::path::Path::new("/p");
        assert_ne!(
            service_hash(&a, "mysql", dir),
            service_hash(&b, "mysql", dir)
        );
        // A link without an alias names nothing new.
        let c = crate::net::tests::project(
            "name: p\nservices:\n  web:\n    image: x\n    links: [mysql]\n  mysql:\n    image: x\n",
        );
        assert_eq!(
            service_hash(&a, "mysql", dir),
            service_hash(&c, "mysql", dir)
        );
    }
}
