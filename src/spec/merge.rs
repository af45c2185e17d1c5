//! Merging project files (`-f a.yaml -f b.yaml`, `extends`, `include`) by the Compose rules:
//! mappings merge key by key; `command`, `entrypoint` and `healthcheck.test` are replaced; most
//! lists are appended; `environment`, `labels` and the like merge by key; `volumes` and `devices`
//! merge by target; `!reset` removes an inherited value and `!override` replaces it whole.

use super::node::{Kind, Node, Tag};

/// Merges `over` on top of `base` for a whole project document.
pub fn merge_project(base: Node, over: Node) -> Node {
    merge_with(base, over, &|path, b, o| match path {
        [svc, _] if *svc == "services" => Some(merge_service(b, o)),
        _ => None,
    })
}

/// Merges one service definition over another (used by `-f` merging and `extends`).
pub fn merge_service(base: Node, over: Node) -> Node {
    merge_with(base, over, &|path, b, o| {
        let key = path.first().copied()?;
        if path.len() != 1 && !(path.len() == 2 && key == "build") {
            if path.len() == 2 && key == "healthcheck" && path[1] == "test" {
                return Some(o);
            }
            return None;
        }
        if path.len() == 2 {
            // build.args, build.labels merge by key like environment.
            return match path[1] {
                "args" | "labels" => Some(merge_keyed_dict(b, o)),
                "tags" | "cache_from" | "cache_to" | "platforms" => Some(append_unique(b, o)),
                _ => None,
            };
        }
        match key {
            "command" | "entrypoint" => Some(o),
            "environment" | "labels" | "annotations" | "sysctls" | "extra_hosts" => {
                Some(merge_keyed_dict(b, o))
            }
            "depends_on" => Some(merge_maps(depends_on_map(b), depends_on_map(o))),
            "volumes" | "devices" => Some(merge_by(b, o, mount_target)),
            "disks" => Some(merge_by(b, o, mount_target)),
            "secrets" | "configs" => Some(merge_by(b, o, file_ref_key)),
            "ports"
            | "expose"
            | "dns"
            | "dns_search"
            | "dns_opt"
            | "env_file"
            | "tmpfs"
            | "cap_add"
            | "cap_drop"
            | "security_opt"
            | "external_links"
            | "links"
            | "volumes_from"
            | "group_add"
            | "device_cgroup_rules"
            | "profiles" => Some(append_unique(b, o)),
            _ => None,
        }
    })
}

type Rule<'a> = dyn Fn(&[&str], Node, Node) -> Option<Node> + 'a;

fn merge_with(base: Node, over: Node, rule: &Rule<'_>) -> Node {
    let mut path = Vec::new();
    merge_at(base, over, rule, &mut path)
}

fn merge_at(base: Node, over: Node, rule: &Rule<'_>, path: &mut Vec<String>) -> Node {
    if over.tag == Some(Tag::Override) {
        return untag(over);
    }
    if !path.is_empty() {
        let p: Vec<&str> = path.iter().map(String::as_str).collect();
        // Rules see paths below the document or service root they were given.
        if let Some(n) = rule(&p, base.clone(), over.clone()) {
            return n;
        }
    }
    match (base.kind, over.kind) {
        (Kind::Map(b), Kind::Map(o)) => {
            let mut out = b;
            for (k, v) in o {
                if v.tag == Some(Tag::Reset) {
                    out.retain(|(e, _)| e.name != k.name);
                    continue;
                }
                match out.iter().position(|(e, _)| e.name == k.name) {
                    Some(i) => {
                        let old =
                            std::mem::replace(&mut out[i].1, Node::new(Kind::Null, v.pos.clone()));
                        path.push(k.name.clone());
                        out[i].1 = merge_at(old, v, rule, path);
                        path.pop();
                    }
                    None => out.push((k, untag(v))),
                }
            }
            Node {
                kind: Kind::Map(out),
                pos: base.pos,
                tag: None,
                plain: false,
            }
        }
        (_, kind) => Node {
            kind,
            pos: over.pos,
            tag: None,
            plain: over.plain,
        },
    }
}

/// Drops the merge tags from a subtree and removes `!reset` entries (they reset nothing when
/// there is nothing below them).
pub fn untag(mut n: Node) -> Node {
    untag_in_place(&mut n);
    n
}

fn untag_in_place(n: &mut Node) {
    n.tag = None;
    match &mut n.kind {
        Kind::Map(m) => {
            m.retain(|(_, v)| v.tag != Some(Tag::Reset));
            for (_, v) in m.iter_mut() {
                untag_in_place(v);
            }
        }
        Kind::Seq(s) => {
            s.retain(|v| v.tag != Some(Tag::Reset));
            for v in s.iter_mut() {
                untag_in_place(v);
            }
        }
        _ => {}
    }
}

fn merge_maps(base: Node, over: Node) -> Node {
    merge_at(base, over, &|_, _, _| None, &mut Vec::new())
}

/// `environment`, `labels`...: a list `["A=1", "B"]` or a map; merged by key; the result is a map.
fn merge_keyed_dict(base: Node, over: Node) -> Node {
    merge_maps(dict_of(base), dict_of(over))
}

/// Turns a `KEY=VALUE` list into a mapping (`KEY` alone maps to null). Other shapes pass through.
pub fn dict_of(n: Node) -> Node {
    let Kind::Seq(items) = &n.kind else { return n };
    let mut entries = Vec::new();
    for it in items {
        let Some(text) = it.scalar_text() else {
            return n;
        };
        let (k, v) = match text.split_once('=') {
            Some((k, v)) => (k.to_string(), Node::str(v, it.pos.clone())),
            None => (text.clone(), Node::new(Kind::Null, it.pos.clone())),
        };
        entries.retain(|(e, _): &(super::node::Key, Node)| e.name != k);
        entries.push((
            super::node::Key {
                name: k,
                pos: it.pos.clone(),
            },
            v,
        ));
    }
    Node {
        kind: Kind::Map(entries),
        pos: n.pos,
        tag: n.tag,
        plain: false,
    }
}

/// `depends_on: [a, b]` becomes `{a: {condition: service_started}, ...}` so both forms merge.
pub fn depends_on_map(n: Node) -> Node {
    let Kind::Seq(items) = &n.kind else { return n };
    let mut entries = Vec::new();
    for it in items {
        let Some(name) = it.as_str() else { return n };
        let mut cond = Node::new(Kind::Map(Vec::new()), it.pos.clone());
        cond.set("condition", Node::str("service_started", it.pos.clone()));
        entries.push((
            super::node::Key {
                name: name.to_string(),
                pos: it.pos.clone(),
            },
            cond,
        ));
    }
    Node {
        kind: Kind::Map(entries),
        pos: n.pos,
        tag: n.tag,
        plain: false,
    }
}

fn append_unique(base: Node, over: Node) -> Node {
    match (base.kind, over.kind) {
        (Kind::Seq(mut b), Kind::Seq(o)) => {
            for item in o {
                if !b.iter().any(|x| x.kind == item.kind) {
                    b.push(untag(item));
                }
            }
            Node::new(Kind::Seq(b), base.pos)
        }
        (_, kind) => Node {
            kind,
            pos: over.pos,
            tag: None,
            plain: over.plain,
        },
    }
}

/// Merges two lists whose items are identified by a key (an item of `over` replaces the item of
/// `base` with the same key, others are appended).
fn merge_by(base: Node, over: Node, key: fn(&Node) -> Option<String>) -> Node {
    match (base.kind, over.kind) {
        (Kind::Seq(mut b), Kind::Seq(o)) => {
            for item in o {
                let k = key(&item);
                match k.and_then(|k| b.iter().position(|x| key(x).as_deref() == Some(&k))) {
                    Some(i) => b[i] = untag(item),
                    None => b.push(untag(item)),
                }
            }
            Node::new(Kind::Seq(b), base.pos)
        }
        (_, kind) => Node {
            kind,
            pos: over.pos,
            tag: None,
            plain: over.plain,
        },
    }
}

/// The target of a mount in short (`src:dst[:mode]`, `dst`) or long (`target:`) syntax.
fn mount_target(n: &Node) -> Option<String> {
    if let Some(s) = n.as_str() {
        let parts: Vec<&str> = s.split(':').collect();
        return Some(match parts.len() {
            1 => parts[0].to_string(),
            _ => parts[1].to_string(),
        });
    }
    n.get("target").and_then(Node::scalar_text)
}

fn file_ref_key(n: &Node) -> Option<String> {
    if let Some(s) = n.as_str() {
        return Some(s.to_string());
    }
    n.get("target")
        .or_else(|| n.get("source"))
        .and_then(Node::scalar_text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn p(s: &str) -> Node {
        super::super::node::parse(&Arc::from("t.yaml"), s)
            .unwrap()
            .unwrap()
    }

    fn j(n: &Node) -> String {
        n.to_json().to_string()
    }

    #[test]
    fn compose_rules() {
        let a = p(
            "services:\n  web:\n    image: a\n    command: [x, y]\n    ports: ['80:80']\n    environment: [A=1, B=2]\n    volumes: ['./a:/data', 'logs:/logs']\n    depends_on: [db]\n",
        );
        let b = p(
            "services:\n  web:\n    command: [z]\n    ports: ['81:81']\n    environment: {B: '3', C: '4'}\n    volumes: ['./b:/data']\n    depends_on: {cache: {condition: service_healthy}}\n",
        );
        let m = merge_project(a, b);
        let web = m.get("services").unwrap().get("web").unwrap();
        assert_eq!(j(web.get("command").unwrap()), r#"["z"]"#);
        assert_eq!(j(web.get("ports").unwrap()), r#"["80:80","81:81"]"#);
        assert_eq!(
            j(web.get("environment").unwrap()),
            r#"{"A":"1","B":"3","C":"4"}"#
        );
        assert_eq!(
            j(web.get("volumes").unwrap()),
            r#"["./b:/data","logs:/logs"]"#
        );
        let deps = web.get("depends_on").unwrap();
        assert!(deps.get("db").is_some() && deps.get("cache").is_some());
    }

    #[test]
    fn reset_and_override() {
        let a =
            p("services:\n  web:\n    image: a\n    ports: ['80:80']\n    environment: {A: '1'}\n");
        let b = p("services:\n  web:\n    ports: !reset []\n    environment: !override {B: '2'}\n");
        let m = merge_project(a, b);
        let web = m.get("services").unwrap().get("web").unwrap();
        assert!(web.get("ports").is_none());
        assert_eq!(j(web.get("environment").unwrap()), r#"{"B":"2"}"#);
    }
}
