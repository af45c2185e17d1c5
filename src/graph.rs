//! The dependency graph of a project's services: `depends_on` plus the implicit edges of
//! `network_mode: service:x`, `volumes_from` and `links`, each edge with its condition. The
//! reconciler starts a service as soon as its own edges are satisfied (no waves or level
//! barriers); stopping goes in reverse.

use std::collections::{BTreeMap, BTreeSet};

use petgraph::Direction;
use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;

use crate::spec::model::{Condition, Project};
use crate::spec::node::Node;
use crate::spec::validate::{Locator, volumes_from_service};
use crate::spec::{Diagnostic, Diagnostics};

/// Why one service depends on another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EdgeKind {
    DependsOn,
    NetworkMode,
    VolumesFrom,
    Links,
}

impl EdgeKind {
    fn key(self) -> &'static str {
        match self {
            EdgeKind::DependsOn => "depends_on",
            EdgeKind::NetworkMode => "network_mode",
            EdgeKind::VolumesFrom => "volumes_from",
            EdgeKind::Links => "links",
        }
    }
}

/// An edge `dependent -> dependency`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub kind: EdgeKind,
    pub condition: Condition,
    /// `required: false`: the dependent starts even if this dependency is missing or failed.
    pub required: bool,
    /// `restart: true`: the dependent restarts when this dependency is restarted.
    pub restart: bool,
}

#[derive(Debug, Clone)]
pub struct Graph {
    g: DiGraph<String, Edge>,
    index: BTreeMap<String, NodeIndex>,
}

/// A dependency cycle, as the list of services in order (the first is repeated at the end
/// when shown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle {
    pub services: Vec<String>,
    /// The kind of the edge leaving each service in `services`.
    pub kinds: Vec<EdgeKind>,
}

impl std::fmt::Display for Cycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = self.services.join(" -> ");
        if let Some(first) = self.services.first() {
            s.push_str(" -> ");
            s.push_str(first);
        }
        f.write_str(&s)
    }
}

impl Graph {
    /// Builds the graph; references to services that do not exist are skipped (the loader has
    /// reported them). Fails with every cycle found.
    pub fn new(project: &Project) -> Result<Graph, Vec<Cycle>> {
        let mut g = DiGraph::new();
        let mut index = BTreeMap::new();
        for name in project.services.keys() {
            index.insert(name.clone(), g.add_node(name.clone()));
        }
        for (name, svc) in &project.services {
            let from = index[name];
            let mut add = |to: &str, e: Edge| {
                if let Some(&t) = index.get(to) {
                    // One edge per pair: an explicit depends_on wins over implicit ones.
                    if let Some(existing) = g.find_edge(from, t) {
                        if e.kind == EdgeKind::DependsOn {
                            g[existing] = e;
                        }
                    } else {
                        g.add_edge(from, t, e);
                    }
                }
            };
            let implicit = |kind| Edge {
                kind,
                condition: Condition::ServiceStarted,
                required: true,
                restart: false,
            };
            if let Some(target) = svc
                .network_mode
                .as_deref()
                .and_then(|m| m.strip_prefix("service:"))
            {
                add(target, implicit(EdgeKind::NetworkMode));
            }
            for vf in &svc.volumes_from {
                if let Some(target) = volumes_from_service(vf) {
                    add(target, implicit(EdgeKind::VolumesFrom));
                }
            }
            for l in &svc.links {
                add(
                    l.split(':').next().unwrap_or_default(),
                    implicit(EdgeKind::Links),
                );
            }
            for (dep, d) in &svc.depends_on {
                add(
                    dep,
                    Edge {
                        kind: EdgeKind::DependsOn,
                        condition: d.condition,
                        required: d.required,
                        restart: d.restart,
                    },
                );
            }
        }
        let graph = Graph { g, index };
        let cycles = graph.cycles();
        if cycles.is_empty() {
            Ok(graph)
        } else {
            Err(cycles)
        }
    }

    fn cycles(&self) -> Vec<Cycle> {
        let mut out = Vec::new();
        for scc in tarjan_scc(&self.g) {
            let self_loop = scc.len() == 1 && self.g.find_edge(scc[0], scc[0]).is_some();
            if scc.len() < 2 && !self_loop {
                continue;
            }
            let members: BTreeSet<NodeIndex> = scc.iter().copied().collect();
            // Start from the alphabetically first service so the message is stable.
            let Some(&start) = scc.iter().min_by_key(|n| &self.g[**n]) else {
                continue;
            };
            // Walk to the next member (smallest name first) until we come back to the start.
            let mut path = vec![start];
            let mut kinds = Vec::new();
            let mut seen = BTreeSet::from([start]);
            let mut cur = start;
            loop {
                let mut next: Vec<(NodeIndex, EdgeKind)> = self
                    .g
                    .edges(cur)
                    .filter(|e| members.contains(&e.target()))
                    .map(|e| (e.target(), e.weight().kind))
                    .collect();
                next.sort_by(|a, b| self.g[a.0].cmp(&self.g[b.0]));
                if let Some(&(_, k)) = next.iter().find(|(n, _)| *n == start)
                    && (path.len() > 1 || self_loop)
                {
                    kinds.push(k);
                    break;
                }
                match next.iter().find(|(n, _)| !seen.contains(n)) {
                    Some(&(n, k)) => {
                        kinds.push(k);
                        seen.insert(n);
                        path.push(n);
                        cur = n;
                    }
                    None => {
                        // Dead end inside the component: back up (rare; keeps the walk total).
                        if path.len() <= 1 {
                            break;
                        }
                        path.pop();
                        kinds.pop();
                        cur = *path.last().unwrap_or(&start);
                    }
                }
            }
            out.push(Cycle {
                services: path.iter().map(|n| self.g[*n].clone()).collect(),
                kinds,
            });
        }
        out.sort_by(|a, b| a.services.cmp(&b.services));
        out
    }

    /// The services `service` depends on, with the edge.
    pub fn dependencies(&self, service: &str) -> Vec<(&str, &Edge)> {
        let Some(&n) = self.index.get(service) else {
            return Vec::new();
        };
        let mut v: Vec<(&str, &Edge)> = self
            .g
            .edges(n)
            .map(|e| (self.g[e.target()].as_str(), e.weight()))
            .collect();
        v.sort_by_key(|(n, _)| *n);
        v
    }

    /// The services that depend on `service`.
    pub fn dependents(&self, service: &str) -> Vec<(&str, &Edge)> {
        let Some(&n) = self.index.get(service) else {
            return Vec::new();
        };
        let mut v: Vec<(&str, &Edge)> = self
            .g
            .edges_directed(n, Direction::Incoming)
            .map(|e| (self.g[e.source()].as_str(), e.weight()))
            .collect();
        v.sort_by_key(|(n, _)| *n);
        v
    }

    /// Every service in an order where dependencies come first.
    pub fn start_order(&self) -> Vec<String> {
        match toposort(&self.g, None) {
            // toposort puts a node before the nodes its edges point to (dependents first).
            Ok(mut order) => {
                order.reverse();
                order.into_iter().map(|n| self.g[n].clone()).collect()
            }
            Err(_) => self.index.keys().cloned().collect(),
        }
    }

    /// Dependents first: the order to stop in.
    pub fn stop_order(&self) -> Vec<String> {
        let mut v = self.start_order();
        v.reverse();
        v
    }

    /// `service` and everything it depends on, transitively (for `up SERVICE`).
    pub fn with_dependencies(&self, services: &[String]) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut stack: Vec<String> = services.to_vec();
        while let Some(s) = stack.pop() {
            if out.insert(s.clone()) {
                stack.extend(
                    self.dependencies(&s)
                        .into_iter()
                        .map(|(d, _)| d.to_string()),
                );
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.g.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.g.node_count() == 0
    }
}

/// Turns cycles into diagnostics that point at the edge leaving the first service.
pub fn cycle_diagnostics(cycles: &[Cycle], tree: &Node) -> Diagnostics {
    let loc = Locator { root: tree };
    let mut d = Diagnostics::default();
    for c in cycles {
        let Some(first) = c.services.first() else {
            continue;
        };
        // Blame the edge written last in the files: it is the one that closed the circle.
        let Some((pos, path)) = c
            .kinds
            .iter()
            .enumerate()
            .map(|(i, kind)| {
                let from = &c.services[i];
                let to = c.services.get(i + 1).unwrap_or(first);
                let item = (*kind != EdgeKind::NetworkMode).then_some(to.as_str());
                loc.find(from, kind.key(), item)
            })
            .max_by(|a, b| a.0.cmp(&b.0))
        else {
            continue;
        };
        // Say which links are implicit: a `network_mode` or `volumes_from` cycle surprises.
        let mut notes = Vec::new();
        for (i, k) in c.kinds.iter().enumerate() {
            if *k == EdgeKind::DependsOn {
                continue;
            }
            let from = &c.services[i];
            let to = c.services.get(i + 1).unwrap_or(first);
            notes.push(match k {
                EdgeKind::NetworkMode => format!("`{from}` uses `network_mode: service:{to}`"),
                EdgeKind::VolumesFrom => format!("`{from}` takes `volumes_from: {to}`"),
                _ => format!("`{from}` links to `{to}`"),
            });
        }
        let notes = if notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", notes.join(", "))
        };
        d.push(Diagnostic::new(
            pos,
            path,
            format!("dependency cycle: {c}{notes}; services cannot wait on each other in a circle"),
        ));
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::model::{Dependency, Service};

    fn project(edges: &[(&str, &[&str])]) -> Project {
        let mut p = Project::default();
        for (name, deps) in edges {
            let mut s = Service::default();
            for d in *deps {
                s.depends_on.insert(
                    d.to_string(),
                    Dependency {
                        condition: Condition::ServiceStarted,
                        restart: false,
                        required: true,
                    },
                );
            }
            p.services.insert(name.to_string(), s);
        }
        p
    }

    #[test]
    fn order_puts_dependencies_first() {
        let g = Graph::new(&project(&[
            ("web", &["db", "cache"]),
            ("db", &[]),
            ("cache", &["db"]),
        ]))
        .unwrap();
        let o = g.start_order();
        let pos = |s: &str| o.iter().position(|x| x == s).unwrap();
        assert!(pos("db") < pos("cache") && pos("cache") < pos("web"));
        assert_eq!(g.stop_order().first().map(String::as_str), Some("web"));
        assert_eq!(g.dependents("db").len(), 2);
    }

    #[test]
    fn cycles_are_named() {
        let e = Graph::new(&project(&[
            ("a", &["b"]),
            ("b", &["c"]),
            ("c", &["a"]),
            ("d", &[]),
        ]))
        .unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].to_string(), "a -> b -> c -> a");
        let e = Graph::new(&project(&[("a", &["a"])])).unwrap_err();
        assert_eq!(e[0].to_string(), "a -> a");
    }

    #[test]
    fn implicit_edges() {
        let mut p = project(&[("app", &[]), ("vpn", &[])]);
        p.services.get_mut("app").unwrap().network_mode = Some("service:vpn".into());
        let g = Graph::new(&p).unwrap();
        assert_eq!(g.dependencies("app")[0].0, "vpn");
        assert_eq!(g.dependencies("app")[0].1.kind, EdgeKind::NetworkMode);
    }
}
