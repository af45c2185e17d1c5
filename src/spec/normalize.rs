//! From the merged, schema-valid tree to the typed `Project`: short syntaxes become long forms
//! (in the deserializers of `model`), `env_file`s are read into `environment`, defaults are
//! filled in (the `default` network, resource names), and profiles pick the active services.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::diag::{Diagnostic, Diagnostics, Pos};
use super::interpolate::{Vars, parse_dotenv};
use super::load::Raw;
use super::model::{Network, Project, Service};
use super::node::Node;

/// Services that exist in the file but are not active under the selected profiles.
#[derive(Debug, Clone, Default)]
pub struct Inactive {
    pub services: BTreeMap<String, Vec<String>>,
}

/// Deserializes `value` into `T`, collecting every failing top-level field instead of stopping
/// at the first: the failing field is reported, removed, and the rest tried again.
fn decode<T: DeserializeOwned>(
    node: &Node,
    base: &[String],
    root: &Node,
    diags: &mut Diagnostics,
) -> Option<T> {
    // The common case decodes straight from the tree; only a value with errors is turned into
    // JSON, to cut fields out of it.
    if let Ok(t) = T::deserialize(node) {
        return Some(t);
    }
    let mut value = node.to_json();
    loop {
        match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(t) => return Some(t),
            Err(e) => {
                let mut segs: Vec<String> = base.to_vec();
                for seg in e.path().iter() {
                    match seg {
                        serde_path_to_error::Segment::Map { key } => segs.push(key.clone()),
                        serde_path_to_error::Segment::Seq { index } => segs.push(index.to_string()),
                        _ => {}
                    }
                }
                let field = segs.get(base.len()).cloned();
                // A list field fails as a whole in its deserializer: find the items that fail
                // on their own, so each error points at its item.
                let mut items_failed = false;
                if segs.len() == base.len() + 1
                    && let (Some(f), Some(Value::Array(items))) =
                        (&field, field.as_ref().and_then(|f| value.get(f)))
                {
                    for (i, item) in items.iter().enumerate() {
                        let mut one = serde_json::Map::new();
                        one.insert(f.clone(), Value::Array(vec![item.clone()]));
                        if let Err(ie) =
                            serde_path_to_error::deserialize::<_, T>(Value::Object(one))
                        {
                            let mut isegs = segs.clone();
                            isegs.push(i.to_string());
                            let (node, _) = root.locate(&isegs);
                            diags.push(Diagnostic::new(
                                node.pos.clone(),
                                display_path(root, &isegs),
                                ie.inner().to_string(),
                            ));
                            items_failed = true;
                        }
                    }
                }
                if !items_failed {
                    let (node, _) = root.locate(&segs);
                    let path = display_path(root, &segs);
                    diags.push(Diagnostic::new(
                        node.pos.clone(),
                        path,
                        e.inner().to_string(),
                    ));
                }
                let removed = match (field, value.as_object_mut()) {
                    (Some(f), Some(obj)) => obj.remove(&f).is_some(),
                    _ => false,
                };
                if !removed {
                    return None;
                }
            }
        }
    }
}

/// `services.web.ports[1]` for a list of segments, lists shown with brackets.
pub fn display_path(root: &Node, segs: &[String]) -> String {
    let mut out = String::new();
    let mut cur = Some(root);
    for s in segs {
        match cur.map(|n| &n.kind) {
            Some(super::node::Kind::Seq(v)) => {
                out.push_str(&format!("[{s}]"));
                cur = s.parse::<usize>().ok().and_then(|i| v.get(i));
            }
            _ => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&super::validate::quote_key(s));
                cur = cur.and_then(|n| n.get(s));
            }
        }
    }
    out
}

pub fn normalize(raw: &Raw, diags: &mut Diagnostics) -> (Project, Inactive) {
    let root = &raw.root;
    let mut project = Project {
        name: raw.name.clone(),
        ..Project::default()
    };
    let empty = Node::new(super::node::Kind::Map(Vec::new()), root.pos.clone());
    let seg = |a: &str, b: &str| vec![a.to_string(), b.to_string()];

    if let Some(services) = root.get("services").and_then(Node::as_map) {
        for (k, v) in services {
            let v = if v.kind == super::node::Kind::Null {
                &empty
            } else {
                v
            };
            if let Some(svc) = decode::<Service>(v, &seg("services", &k.name), root, diags) {
                project.services.insert(k.name.clone(), svc);
            }
        }
    }
    macro_rules! section {
        ($key:literal, $field:ident) => {
            if let Some(m) = root.get($key).and_then(Node::as_map) {
                for (k, v) in m {
                    let v = if v.kind == super::node::Kind::Null {
                        &empty
                    } else {
                        v
                    };
                    if let Some(x) = decode(v, &seg($key, &k.name), root, diags) {
                        project.$field.insert(k.name.clone(), x);
                    }
                }
            }
        };
    }
    section!("networks", networks);
    section!("volumes", volumes);
    section!("secrets", secrets);
    section!("configs", configs);
    section!("disks", disks);
    if let Some(Value::Object(m)) = root.get("models").map(Node::to_json) {
        project.models = m.into_iter().collect();
    }
    for (k, v) in root.as_map().into_iter().flatten() {
        if k.name.starts_with("x-") {
            project.extra.insert(k.name.clone(), v.to_json());
        }
    }

    // The services whose env files must be there: those the command is about, and what they
    // depend on.
    let needed: Option<std::collections::BTreeSet<String>> = raw.env_for.as_ref().map(|named| {
        let mut set = std::collections::BTreeSet::new();
        let mut todo: Vec<String> = named.clone();
        while let Some(n) = todo.pop() {
            if set.insert(n.clone())
                && let Some(s) = project.services.get(&n)
            {
                todo.extend(s.depends_on.keys().cloned());
            }
        }
        set
    });
    for (name, svc) in project.services.iter_mut() {
        let lenient = needed.as_ref().is_some_and(|n| !n.contains(name));
        resolve_environment(name, svc, &raw.vars, &raw.cwd, root, lenient, diags);
        if svc.networks.is_empty() && svc.network_mode.is_none() {
            svc.networks.insert("default".into(), None);
        }
    }

    // The implicit `default` network, and host-side names for resources.
    let uses_default = project
        .services
        .values()
        .any(|s| s.networks.contains_key("default"));
    if uses_default && !project.networks.contains_key("default") {
        project
            .networks
            .insert("default".into(), Network::default());
    }
    let pname = project.name.clone();
    for (k, n) in project.networks.iter_mut() {
        if n.name.is_none() {
            n.name = Some(if n.external == Some(true) {
                k.clone()
            } else {
                format!("{pname}_{k}")
            });
        }
    }
    for (k, v) in project.volumes.iter_mut() {
        if v.name.is_none() {
            v.name = Some(if v.external == Some(true) {
                k.clone()
            } else {
                format!("{pname}_{k}")
            });
        }
    }
    for (k, d) in project.disks.iter_mut() {
        if d.name.is_none() {
            d.name = Some(if d.external == Some(true) {
                k.clone()
            } else {
                format!("{pname}_{k}")
            });
        }
    }

    // A service that is built and names no image gets Compose's name for it, so every verb
    // (and the supervisor) sees the same image and the same config hash.
    for (k, svc) in project.services.iter_mut() {
        if svc.image.is_none() && svc.build.is_some() {
            svc.image = Some(format!("{pname}-{k}"));
        }
    }

    let inactive = apply_profiles(&mut project, &raw.profiles);
    (project, inactive)
}

/// Reads `env_file`s (first) and resolves `environment` entries given without a value from the
/// shell and `.env` (as Compose does).
fn resolve_environment(
    name: &str,
    svc: &mut Service,
    vars: &Vars,
    cwd: &Path,
    root: &Node,
    lenient: bool,
    diags: &mut Diagnostics,
) {
    let mut env: BTreeMap<String, Option<String>> = BTreeMap::new();
    let env_node_at = |i: usize| -> (Pos, String) {
        let mut segs = vec![
            "services".to_string(),
            name.to_string(),
            "env_file".to_string(),
        ];
        if root.locate(&segs).0.as_seq().is_some() {
            segs.push(i.to_string());
        }
        (root.locate(&segs).0.pos.clone(), display_path(root, &segs))
    };
    for (i, ef) in svc.env_file.iter().enumerate() {
        let text = match std::fs::read_to_string(Path::new(&ef.path)) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && (!ef.required || lenient) => {
                continue;
            }
            Err(e) => {
                let shown = super::load::shown(Path::new(&ef.path), cwd);
                let (pos, path) = env_node_at(i);
                diags.push(Diagnostic::new(
                    pos,
                    path,
                    if e.kind() == std::io::ErrorKind::NotFound {
                        format!("env file {shown} does not exist (give it `required: false` if it is optional)")
                    } else {
                        format!("cannot read env file {shown}: {e}")
                    },
                ));
                continue;
            }
        };
        let raw = ef.format.as_deref() == Some("raw");
        let lookup = |k: &str| vars.get(k).cloned();
        match parse_dotenv(&text, raw, &lookup) {
            Ok(pairs) => {
                for (k, v) in pairs {
                    env.insert(k, v);
                }
            }
            Err(e) => diags.push(Diagnostic::new(
                Pos::new(
                    &std::sync::Arc::from(super::load::shown(Path::new(&ef.path), cwd).as_str()),
                    e.line,
                    1,
                ),
                format!("services.{name}.env_file"),
                e.message,
            )),
        }
    }
    for (k, v) in std::mem::take(&mut svc.environment) {
        let v = match v {
            Some(v) => Some(v),
            None => vars.get(&k).cloned(),
        };
        env.insert(k, v);
    }
    svc.environment = env;
    // Consumed: the model carries the resulting environment, not where it came from.
    svc.env_file.clear();

    if let Some(Value::String(_) | Value::Array(_)) = svc.extra.get("label_file") {
        let files: Vec<String> = match svc.extra.remove("label_file") {
            Some(Value::String(s)) => vec![s],
            Some(Value::Array(a)) => a
                .into_iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        for f in files {
            match std::fs::read_to_string(&f) {
                Ok(text) => {
                    if let Ok(pairs) = parse_dotenv(&text, false, &|_| None) {
                        for (k, v) in pairs {
                            svc.labels.entry(k).or_insert_with(|| v.unwrap_or_default());
                        }
                    }
                }
                Err(e) => diags.push(Diagnostic::new(
                    root.locate(&[
                        "services".to_string(),
                        name.to_string(),
                        "label_file".to_string(),
                    ])
                    .0
                    .pos
                    .clone(),
                    format!("services.{name}.label_file"),
                    format!("cannot read label file {f}: {e}"),
                )),
            }
        }
    }
}

/// Keeps the services that are active: those without profiles, and those with a profile that
/// is enabled (`*` enables all). The others are set aside with their profiles.
fn apply_profiles(project: &mut Project, active: &[String]) -> Inactive {
    let all = active.iter().any(|p| p == "*");
    let active: BTreeSet<&str> = active.iter().map(String::as_str).collect();
    let mut inactive = Inactive::default();
    let names: Vec<String> = project.services.keys().cloned().collect();
    for n in names {
        let keep = match project.services.get(&n) {
            Some(s) => {
                s.profiles.is_empty()
                    || all
                    || s.profiles.iter().any(|p| active.contains(p.as_str()))
            }
            None => true,
        };
        if !keep && let Some(s) = project.services.remove(&n) {
            inactive.services.insert(n, s.profiles);
        }
    }
    inactive
}
