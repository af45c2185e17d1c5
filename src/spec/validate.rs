//! Checks across the whole project that no schema can express: references to undefined
//! services, networks, volumes, secrets, configs and disks; private disks claimed twice;
//! duplicate container names; host ports published twice. (Dependency cycles are found by
//! `graph`, which reports them with the positions kept here.)

use std::collections::BTreeMap;

use super::diag::{Diagnostic, Diagnostics, Pos};
use super::model::{DiskKind, Project};
use super::node::{Kind, Node};
use super::normalize::Inactive;

/// ` (did you mean `x`?)` when a known name is close to `word`, else empty.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(word, c);
        let limit = (word.chars().count() / 3).max(1);
        let close = score > 0.85 || strsim::levenshtein(word, c) <= limit;
        if close && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    match best {
        Some((_, c)) if c != word => format!(" (did you mean `{c}`?)"),
        _ => String::new(),
    }
}

/// The service a `volumes_from` entry names (`svc`, `svc:ro`, `service:svc[:ro]`), or None for
/// `container:name`.
pub fn volumes_from_service(entry: &str) -> Option<&str> {
    let mut parts = entry.split(':');
    match parts.next()? {
        "container" => None,
        "service" => parts.next(),
        s => Some(s),
    }
}

/// Finds file positions for semantic errors, in the merged tree the model came from.
pub struct Locator<'a> {
    pub root: &'a Node,
}

impl Locator<'_> {
    /// The position and display path of `services.<svc>.<key>`, and inside it the entry named
    /// `item` (a mapping key, a list item equal to or starting with `item`, or a long-form item
    /// whose `source`/`target`/`published` is `item`).
    pub fn find(&self, svc: &str, key: &str, item: Option<&str>) -> (Pos, String) {
        let base = format!("services.{}.{key}", quote_key(svc));
        let Some(s) = self.root.get("services").and_then(|s| s.get(svc)) else {
            return (self.root.pos.clone(), base);
        };
        let Some(v) = s.get(key) else {
            return (s.pos.clone(), base);
        };
        let Some(item) = item else {
            return (v.pos.clone(), base);
        };
        match &v.kind {
            Kind::Map(m) => match m.iter().find(|(k, _)| k.name == item) {
                Some((k, _)) => (k.pos.clone(), format!("{base}.{}", quote_key(item))),
                None => (v.pos.clone(), base),
            },
            Kind::Seq(items) => {
                for (i, it) in items.iter().enumerate() {
                    if let Kind::Map(_) = &it.kind {
                        for k in ["source", "target", "service", "published"] {
                            if let Some(f) = it.get(k)
                                && f.scalar_text().as_deref() == Some(item)
                            {
                                return (f.pos.clone(), format!("{base}[{i}].{k}"));
                            }
                        }
                        continue;
                    }
                    let hit = it.scalar_text().is_some_and(|t| {
                        t == item
                            || t.starts_with(&format!("{item}:"))
                            || t.split(':').any(|p| p == item)
                    });
                    if hit {
                        return (it.pos.clone(), format!("{base}[{i}]"));
                    }
                }
                (v.pos.clone(), base)
            }
            _ => (v.pos.clone(), base),
        }
    }

    /// The `ports` item of a service that produced `port` (short items expand to many ports).
    pub fn find_port(&self, svc: &str, port: &super::model::Port) -> (Pos, String) {
        let base = format!("services.{}.ports", quote_key(svc));
        let Some(v) = self
            .root
            .get("services")
            .and_then(|s| s.get(svc))
            .and_then(|s| s.get("ports"))
        else {
            return self.find(svc, "ports", None);
        };
        for (i, it) in v.as_seq().into_iter().flatten().enumerate() {
            let produced = match &it.kind {
                Kind::Str(s) => super::model::parse_port_short(s).unwrap_or_default(),
                _ => Vec::new(),
            };
            let long_hit = it.get("target").and_then(Node::scalar_text)
                == Some(port.target.to_string())
                && it.get("published").and_then(Node::scalar_text) == port.published;
            if long_hit || produced.iter().any(|p| p == port) {
                return (it.pos.clone(), format!("{base}[{i}]"));
            }
        }
        (v.pos.clone(), base)
    }

    pub fn service(&self, svc: &str) -> Pos {
        self.root
            .get("services")
            .and_then(|s| s.key_pos(svc))
            .cloned()
            .unwrap_or_else(|| self.root.pos.clone())
    }

    /// Where a service is first written: to report the later of two clashing services.
    pub fn service_order<'a>(&self, names: impl Iterator<Item = &'a String>) -> Vec<&'a String> {
        let positions: std::collections::HashMap<&str, &Pos> = self
            .root
            .get("services")
            .and_then(Node::as_map)
            .map(|m| m.iter().map(|(k, _)| (k.name.as_str(), &k.pos)).collect())
            .unwrap_or_default();
        let mut v: Vec<(Option<&Pos>, &String)> = names
            .map(|n| (positions.get(n.as_str()).copied(), n))
            .collect();
        v.sort();
        v.into_iter().map(|(_, n)| n).collect()
    }

    pub fn top(&self, section: &str, name: &str, key: Option<&str>) -> (Pos, String) {
        let base = format!("{section}.{}", quote_key(name));
        let Some(sec) = self.root.get(section) else {
            return (self.root.pos.clone(), base);
        };
        let Some(entry) = sec.get(name) else {
            return (sec.key_pos(name).cloned().unwrap_or(sec.pos.clone()), base);
        };
        match key.and_then(|k| entry.get(k).map(|v| (k, v))) {
            Some((k, v)) => (v.pos.clone(), format!("{base}.{k}")),
            None => (entry.pos.clone(), base),
        }
    }
}

/// A key as shown in a key path: quoted when it holds characters a path cannot show plainly.
pub fn quote_key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | '$'))
    {
        k.to_string()
    } else {
        format!("{k:?}")
    }
}

/// `no network `x` is defined (did you mean `y`?); defined networks: a, b`
fn undefined(kind: &str, name: &str, known: Vec<&str>) -> String {
    let hint = did_you_mean(name, known.iter().copied());
    if known.is_empty() {
        format!("no {kind} `{name}` is defined{hint}; the project defines no {kind}s")
    } else {
        format!(
            "no {kind} `{name}` is defined{hint}; defined {kind}s: {}",
            known.join(", ")
        )
    }
}

pub fn validate(project: &Project, inactive: &Inactive, root: &Node, diags: &mut Diagnostics) {
    let loc = Locator { root };
    let services: Vec<&str> = project.services.keys().map(String::as_str).collect();
    let mut push =
        |(pos, path): (Pos, String), msg: String| diags.push(Diagnostic::new(pos, path, msg));

    let mut container_names: BTreeMap<&str, &str> = BTreeMap::new();
    let mut private_disks: BTreeMap<&str, &str> = BTreeMap::new();

    // File order, so that of two clashing services the one written later is blamed.
    let order = loc.service_order(project.services.keys());
    for name in order.iter().copied() {
        let svc = &project.services[name];
        if svc.image.is_none() && svc.build.is_none() && svc.provider.is_none() {
            push(
                (loc.service(name), format!("services.{name}")),
                "a service needs `image:` (an image name, or `host`) or `build:`".into(),
            );
        }
        if let (Some(s), Some(r)) = (svc.scale, svc.deploy.as_ref().and_then(|d| d.replicas))
            && s != r
        {
            push(
                loc.find(name, "scale", None),
                format!("`scale: {s}` and `deploy.replicas: {r}` disagree; keep one"),
            );
        }
        for (dep, d) in &svc.depends_on {
            if project.services.contains_key(dep) {
                if d.condition == super::model::Condition::ServiceHealthy {
                    let target = &project.services[dep];
                    let explicit_off = target.healthcheck.as_ref().is_some_and(|h| !h.enabled());
                    let never = explicit_off
                        || (target.healthcheck.is_none()
                            && target.image.as_deref() == Some("host"));
                    if never {
                        push(
                            loc.find(name, "depends_on", Some(dep)),
                            format!(
                                "waits for `{dep}` to be healthy, but `{dep}` has no health check{}; add a `healthcheck:` to `{dep}` or use `condition: service_started`",
                                if explicit_off {
                                    " (it is disabled)"
                                } else {
                                    ""
                                }
                            ),
                        );
                    }
                }
                continue;
            }
            if !d.required {
                continue;
            }
            let msg = match inactive.services.get(dep) {
                Some(profiles) => format!(
                    "depends on `{dep}`, which is only enabled by profile {}: enable it with `--profile {}` or mark the dependency `required: false`",
                    profiles
                        .iter()
                        .map(|p| format!("`{p}`"))
                        .collect::<Vec<_>>()
                        .join(" or "),
                    profiles.first().map(String::as_str).unwrap_or_default()
                ),
                None => format!(
                    "depends on `{dep}`, but {}",
                    undefined("service", dep, services.clone())
                ),
            };
            push(loc.find(name, "depends_on", Some(dep)), msg);
        }
        for net in svc.networks.keys() {
            if !project.networks.contains_key(net) {
                let known: Vec<&str> = project.networks.keys().map(String::as_str).collect();
                push(
                    loc.find(name, "networks", Some(net)),
                    undefined("network", net, known),
                );
            }
        }
        if let Some(mode) = &svc.network_mode {
            let ok = match mode.split_once(':') {
                Some(("service", target)) => {
                    if !project.services.contains_key(target) {
                        push(
                            loc.find(name, "network_mode", None),
                            format!(
                                "uses the network of `{target}`, but {}",
                                undefined("service", target, services.clone())
                            ),
                        );
                    }
                    true
                }
                Some(("container", _)) => true,
                None => matches!(mode.as_str(), "none" | "host" | "bridge" | "default"),
                _ => false,
            };
            if !ok {
                push(
                    loc.find(name, "network_mode", None),
                    format!(
                        "expected none, host, bridge, service:NAME or container:NAME, found `{mode}`"
                    ),
                );
            }
            if !svc.networks.is_empty() {
                push(
                    loc.find(name, "networks", None),
                    "`networks` cannot be used together with `network_mode`".into(),
                );
            }
            if mode == "host" && svc.bandwidth.is_some() {
                push(
                    loc.find(name, "bandwidth", None),
                    "a bandwidth limit needs the service's own network; it cannot apply with `network_mode: host`".into(),
                );
            }
        }
        for m in &svc.volumes {
            if m.kind == "volume"
                && let Some(src) = &m.source
                && !project.volumes.contains_key(src)
            {
                let known: Vec<&str> = project.volumes.keys().map(String::as_str).collect();
                push(
                    loc.find(name, "volumes", Some(src)),
                    format!(
                        "{} (declare it under the top-level `volumes:`)",
                        undefined("volume", src, known)
                    ),
                );
            }
        }
        for (key, refs, defined) in [
            ("secrets", &svc.secrets, &project.secrets),
            ("configs", &svc.configs, &project.configs),
        ] {
            for r in refs {
                if !defined.contains_key(&r.source) {
                    let known: Vec<&str> = defined.keys().map(String::as_str).collect();
                    let kind = &key[..key.len() - 1];
                    push(
                        loc.find(name, key, Some(&r.source)),
                        undefined(kind, &r.source, known),
                    );
                }
            }
        }
        for vf in &svc.volumes_from {
            let target = volumes_from_service(vf);
            let Some(target) = target else { continue };
            if !project.services.contains_key(target) {
                push(
                    loc.find(name, "volumes_from", Some(target)),
                    format!(
                        "takes volumes from `{target}`, but {}",
                        undefined("service", target, services.clone())
                    ),
                );
            }
        }
        for l in &svc.links {
            let target = l.split(':').next().unwrap_or_default();
            if !project.services.contains_key(target) {
                push(
                    loc.find(name, "links", Some(target)),
                    format!(
                        "links to `{target}`, but {}",
                        undefined("service", target, services.clone())
                    ),
                );
            }
        }
        if let Some(cn) = &svc.container_name {
            if svc.replicas() > 1 {
                push(
                    loc.find(name, "container_name", None),
                    format!(
                        "`container_name` must be unique, but the service runs {} replicas; remove it or run one",
                        svc.replicas()
                    ),
                );
            }
            if let Some(other) = container_names.insert(cn, name) {
                push(
                    loc.find(name, "container_name", None),
                    format!("container name `{cn}` is already used by service `{other}`"),
                );
            }
        }
        for dm in &svc.disks {
            let Some(disk) = project.disks.get(&dm.source) else {
                let known: Vec<&str> = project.disks.keys().map(String::as_str).collect();
                push(
                    loc.find(name, "disks", Some(&dm.source)),
                    format!(
                        "{} (declare it under the top-level `disks:`)",
                        undefined("disk", &dm.source, known)
                    ),
                );
                continue;
            };
            if !dm.target.starts_with('/') {
                push(
                    loc.find(name, "disks", Some(&dm.source)),
                    format!(
                        "expected an absolute container path as the target, found `{}`",
                        dm.target
                    ),
                );
            }
            if disk.kind == DiskKind::Private {
                if svc.replicas() > 1 {
                    push(
                        loc.find(name, "disks", Some(&dm.source)),
                        format!(
                            "private disk `{}` can be attached to one container, but `{name}` runs {} replicas; use a shared disk or one replica",
                            dm.source,
                            svc.replicas()
                        ),
                    );
                }
                if let Some(other) = private_disks.insert(&dm.source, name)
                    && other != name
                {
                    push(
                        loc.find(name, "disks", Some(&dm.source)),
                        format!(
                            "private disk `{}` is already attached to service `{other}`; a private disk belongs to one container (use a shared disk to share)",
                            dm.source
                        ),
                    );
                }
            }
        }
        if let (Some(limit), Some(swap)) = (svc.mem_limit, svc.memswap_limit)
            && swap >= 0
            && (swap as u64) < limit
        {
            push(
                loc.find(name, "memswap_limit", None),
                format!(
                    "`memswap_limit` ({swap} bytes) is memory plus swap, so it cannot be below `mem_limit` ({limit} bytes)"
                ),
            );
        }
        for (i, rule) in svc.develop.iter().flat_map(|d| d.watch.iter()).enumerate() {
            let at = || {
                let segs: Vec<String> = ["services", name, "develop", "watch"]
                    .iter()
                    .map(|s| s.to_string())
                    .chain([i.to_string()])
                    .collect();
                (
                    loc.root.locate(&segs).0.pos.clone(),
                    format!("services.{name}.develop.watch[{i}]"),
                )
            };
            if !matches!(
                rule.action.as_str(),
                "sync" | "rebuild" | "restart" | "sync+restart" | "sync+exec"
            ) {
                push(
                    at(),
                    format!(
                        "unknown action `{}` (sync, rebuild, restart, sync+restart, sync+exec)",
                        rule.action
                    ),
                );
            } else if rule.action.starts_with("sync") && rule.target.is_none() {
                push(
                    at(),
                    format!(
                        "`{}` of {} needs a `target`",
                        rule.action,
                        rule.path.display()
                    ),
                );
            } else if rule.action == "rebuild" && svc.build.is_none() {
                push(at(), "`rebuild` needs a `build:` key".to_string());
            }
        }
        if let Some(n) = svc.mem_swappiness
            && n > 100
        {
            push(
                loc.find(name, "mem_swappiness", None),
                format!("`mem_swappiness` is 0 to 100; found {n}"),
            );
        }
        if let Some(n) = svc.oom_score_adj
            && !(-1000..=1000).contains(&n)
        {
            push(
                loc.find(name, "oom_score_adj", None),
                format!("`oom_score_adj` is -1000 to 1000; found {n}"),
            );
        }
        if let Some(m) = &svc.cgroup
            && m != "private"
        {
            push(
                loc.find(name, "cgroup", None),
                format!(
                    "`cgroup: {m}` is not supported yet: every container has a cgroup namespace of its own (`private`)"
                ),
            );
        }
        // `ipc: service:x` and `pid: service:x` name another service of the project.
        let pid = svc.extra.get("pid").and_then(|v| v.as_str());
        for (key, mode) in [("ipc", svc.ipc.as_deref()), ("pid", pid)] {
            if let Some(other) = mode.and_then(|m| m.strip_prefix("service:"))
                && !project.services.contains_key(other)
            {
                push(
                    loc.find(name, key, None),
                    format!(
                        "`{key}: service:{other}`: {}",
                        undefined("service", other, services.clone())
                    ),
                );
            }
        }
        for (i, m) in svc.volumes.iter().enumerate() {
            if m.kind == "bind" && m.source.as_deref().is_none_or(str::is_empty) {
                let (pos, _) = loc.find(name, "volumes", Some(&m.target));
                push(
                    (pos, format!("services.{}.volumes[{i}]", quote_key(name))),
                    format!(
                        "the bind mount on `{}` has no `source:` (the host path to mount)",
                        m.target
                    ),
                );
            }
        }
        // A build for several platforms must include the one the service runs on.
        if let (Some(platform), Some(b)) = (
            svc.extra.get("platform").and_then(|v| v.as_str()),
            &svc.build,
        ) && let Some(list) = b.extra.get("platforms").and_then(|v| v.as_array())
            && !list.is_empty()
            && !list.iter().any(|p| p.as_str() == Some(platform))
        {
            let listed: Vec<&str> = list.iter().filter_map(|p| p.as_str()).collect();
            push(
                loc.find(name, "build", None),
                format!(
                    "`platform: {platform}` is not among `build.platforms` ({}): the image would not be built for it",
                    listed.join(", ")
                ),
            );
        }
        for (key, mode) in [("ipc", &svc.ipc), ("uts", &svc.uts)] {
            let undefined_service = mode
                .as_deref()
                .and_then(|m| m.strip_prefix("service:"))
                .is_some_and(|o| !project.services.contains_key(o));
            if let Some(m) = mode
                && !undefined_service
                && !matches!(m.as_str(), "" | "private" | "shareable" | "host")
            {
                push(
                    loc.find(name, key, None),
                    format!(
                        "`{key}: {m}` is not supported yet: a container has its own namespace (`private`, `shareable`) or the host's (`host`)"
                    ),
                );
            }
        }
        if let Some(b) = &svc.blkio_config {
            let weights = b
                .weight
                .iter()
                .chain(b.weight_device.iter().map(|w| &w.weight));
            for w in weights {
                if !(10..=1000).contains(w) {
                    push(
                        loc.find(name, "blkio_config", None),
                        format!("a block I/O weight is 10 to 1000, as in Compose; found {w}"),
                    );
                }
            }
            let lists: [(&str, Vec<&String>); 5] = [
                (
                    "weight_device",
                    b.weight_device.iter().map(|w| &w.path).collect(),
                ),
                (
                    "device_read_bps",
                    b.device_read_bps.iter().map(|r| &r.path).collect(),
                ),
                (
                    "device_write_bps",
                    b.device_write_bps.iter().map(|r| &r.path).collect(),
                ),
                (
                    "device_read_iops",
                    b.device_read_iops.iter().map(|r| &r.path).collect(),
                ),
                (
                    "device_write_iops",
                    b.device_write_iops.iter().map(|r| &r.path).collect(),
                ),
            ];
            for (list, paths) in lists {
                for (i, p) in paths.into_iter().enumerate() {
                    if p.starts_with('/') {
                        continue;
                    }
                    let segs: Vec<String> = ["services", name, "blkio_config", list]
                        .iter()
                        .map(|s| s.to_string())
                        .chain([i.to_string(), "path".into()])
                        .collect();
                    let (node, _) = loc.root.locate(&segs);
                    push(
                        (
                            node.pos.clone(),
                            format!("services.{name}.blkio_config.{list}[{i}].path"),
                        ),
                        format!(
                            "`{p}` is not a device path; `blkio_config` names a host block device like /dev/sda"
                        ),
                    );
                }
            }
        }
        if let (Some(limit), Some(res)) = (svc.mem_limit, svc.mem_reservation)
            && res > limit
        {
            push(
                loc.find(name, "mem_reservation", None),
                format!("`mem_reservation` ({res} bytes) is above `mem_limit` ({limit} bytes)"),
            );
        }
    }

    // Disks: a private disk needs a size, a shared one a seed (the schema says so too; this
    // keeps the typed model honest when the schema is bypassed by `$` values).
    for (dname, d) in &project.disks {
        if d.external == Some(true) {
            continue;
        }
        match d.kind {
            DiskKind::Private if d.size.is_none() => push(
                loc.top("disks", dname, None),
                "a private disk needs `size` (e.g. `size: 1g`)".into(),
            ),
            DiskKind::Shared if d.source.is_none() => push(
                loc.top("disks", dname, None),
                "a shared disk needs `source`, the directory it is seeded from".into(),
            ),
            DiskKind::Private if d.size == Some(0) => push(
                loc.top("disks", dname, Some("size")),
                "a private disk needs a size above 0".into(),
            ),
            _ => {}
        }
    }

    // Host ports: two claims conflict when protocol matches, ranges overlap and addresses
    // overlap (an unset address is every address). A fixed host port on a service with several
    // replicas conflicts with itself.
    struct Claim<'a> {
        svc: &'a str,
        ip: Option<&'a str>,
        proto: &'a str,
        published: &'a str,
    }
    let mut claims: Vec<Claim<'_>> = Vec::new();
    let mut by_port: std::collections::HashMap<(&str, u16), Vec<usize>> =
        std::collections::HashMap::new();
    for name in order.iter().copied() {
        let svc = &project.services[name];
        for p in &svc.ports {
            let Some(published) = p.published.as_deref() else {
                continue;
            };
            let Some(range) = p.host_ports() else {
                continue;
            };
            if svc.replicas() > 1 && range.start() == range.end() {
                push(
                    loc.find_port(name, p),
                    format!(
                        "host port {published} is fixed, but `{name}` runs {} replicas and each would need it; publish a range or leave the host port out",
                        svc.replicas()
                    ),
                );
            }
            let ip = p
                .host_ip
                .as_deref()
                .filter(|i| *i != "0.0.0.0" && *i != "::");
            // Earlier claims on any port of this range, found through the per-port index
            // (a thousand services must not cost a million comparisons).
            let hit = range
                .clone()
                .flat_map(|port| {
                    by_port
                        .get(&(p.protocol.as_str(), port))
                        .into_iter()
                        .flatten()
                })
                .map(|&i| &claims[i])
                .find(|c| c.ip.is_none() || ip.is_none() || c.ip == ip);
            if let Some(c) = hit {
                let msg = if c.svc == name.as_str() {
                    format!(
                        "host port {published}/{} is published twice by `{name}`",
                        p.protocol
                    )
                } else {
                    format!(
                        "host port {published}/{} is already published by service `{}` ({}/{})",
                        p.protocol, c.svc, c.published, c.proto
                    )
                };
                push(loc.find_port(name, p), msg);
            }
            for port in range.clone() {
                by_port
                    .entry((p.protocol.as_str(), port))
                    .or_default()
                    .push(claims.len());
            }
            claims.push(Claim {
                svc: name,
                ip,
                proto: &p.protocol,
                published,
            });
        }
    }
}
