//! Structural validation of a project file against berth's JSON Schema (`schemas/`), the same
//! schema editors use, so the two cannot disagree about what a file may contain. Each schema
//! error is turned into a berth diagnostic: the file position of the offending node, its key
//! path, and a sentence saying what was expected and what was found.

use std::sync::OnceLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{JsonType, ValidationError, Validator};
use serde_json::Value;

use super::diag::{Diagnostic, Diagnostics};
use super::node::{Kind, Node};
use super::validate::did_you_mean;

/// The schema, embedded so the binary needs no files beside it.
pub const SCHEMA_TEXT: &str = include_str!("../../schemas/berth.schema.json");

struct Compiled {
    schema: Value,
    validator: Validator,
}

fn compiled() -> Result<&'static Compiled, String> {
    static C: OnceLock<Result<Compiled, String>> = OnceLock::new();
    C.get_or_init(|| {
        let schema: Value =
            serde_json::from_str(SCHEMA_TEXT).map_err(|e| format!("schema is not JSON: {e}"))?;
        let validator = jsonschema::draft7::options()
            .should_validate_formats(false)
            .build(&schema)
            .map_err(|e| format!("schema does not compile: {e}"))?;
        Ok(Compiled { schema, validator })
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Is `value` valid under the schema? (For tests comparing the schema with the loader.)
pub fn is_valid(value: &Value) -> bool {
    compiled().is_ok_and(|c| c.validator.is_valid(value))
}

/// Validates a whole (merged) project tree; every problem becomes one diagnostic.
pub fn validate(root: &Node) -> Diagnostics {
    validate_json(root, &root.to_json())
}

/// `validate`, for a caller that already has the tree as JSON.
pub fn validate_json(root: &Node, json: &Value) -> Diagnostics {
    let mut out = Diagnostics::default();
    let c = match compiled() {
        Ok(c) => c,
        Err(e) => {
            out.push(Diagnostic::new(
                root.pos.clone(),
                "",
                format!("internal error: {e}"),
            ));
            return out;
        }
    };
    // Checking validity alone is cheaper than collecting errors; a valid file (the usual case)
    // pays only for that.
    if c.validator.is_valid(json) {
        return out;
    }
    for err in c.validator.iter_errors(json) {
        report(c, root, &err, &mut out);
    }
    out
}

fn segments(loc: &jsonschema::paths::Location) -> Vec<String> {
    loc.as_str()
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// `services.web.ports[1]` from JSON-pointer segments (numeric segments under lists).
fn key_path(root: &Node, segs: &[String]) -> String {
    let mut out = String::new();
    let mut cur = Some(root);
    for s in segs {
        let is_index = matches!(cur.map(|n| &n.kind), Some(Kind::Seq(_)));
        if is_index {
            out.push_str(&format!("[{s}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&super::validate::quote_key(s));
        }
        cur = cur.and_then(|n| match &n.kind {
            Kind::Map(_) => n.get(s),
            Kind::Seq(v) => s.parse::<usize>().ok().and_then(|i| v.get(i)),
            _ => None,
        });
    }
    out
}

fn type_words(t: JsonType) -> &'static str {
    match t {
        JsonType::Null => "null",
        JsonType::Boolean => "a boolean",
        JsonType::Integer => "an integer",
        JsonType::Number => "a number",
        JsonType::String => "a string",
        JsonType::Array => "a list",
        JsonType::Object => "a mapping",
    }
}

/// How the offending value is shown: scalars with their text, collections by kind.
pub fn found(n: &Node) -> String {
    match &n.kind {
        Kind::Str(s) => format!("`{s}`"),
        Kind::Int(i) => i.to_string(),
        Kind::Float(f) => f.to_string(),
        Kind::Bool(b) => b.to_string(),
        _ => n.type_name().to_string(),
    }
}

/// The `definitions/<name>` the failing keyword sits in, if any.
fn definition(schema_path: &str) -> Option<&str> {
    let i = schema_path.rfind("definitions/")?;
    schema_path[i + "definitions/".len()..].split('/').next()
}

/// What a named definition expects, in words.
fn expected_of(def: &str) -> Option<&'static str> {
    Some(match def {
        "size" => "a size like 512m or 1g",
        "duration" => "a duration like 30s, 1m30s or 500ms",
        "rate" => "a rate like 10mbit, 512kbit or 1gbit",
        "bool" => "true or false",
        "int" => "a whole number",
        "uint" => "a whole number of 0 or more",
        "number" => "a number",
        "restart" => "no, always, on-failure[:N] or unless-stopped",
        _ => return None,
    })
}

/// What a key expects when its schema has no named definition.
fn expected_of_key(segs: &[String]) -> Option<&'static str> {
    Some(match segs.last()?.as_str() {
        "cpus" => "a number of CPUs like 0.5 or 2",
        "cpu_shares" | "cpu_period" | "cpu_quota" | "cpu_count" | "cpu_percent" | "pids_limit"
        | "oom_score_adj" | "mem_swappiness" | "replicas" | "scale" | "retries" | "pids" => {
            "a whole number"
        }
        "name" if segs.len() == 1 => {
            "a project name of lowercase letters, digits, `-` and `_`, starting with a letter or digit"
        }
        _ => return None,
    })
}

/// The `properties` a failing object schema allows (for did-you-mean).
fn allowed_keys<'a>(schema: &'a Value, schema_path: &str) -> Vec<&'a str> {
    let mut segs: Vec<String> = schema_path
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect();
    segs.pop(); // the failing keyword itself
    let mut cur = schema;
    for s in &segs {
        cur = match cur {
            Value::Object(m) => match m.get(s) {
                Some(v) => v,
                None => return Vec::new(),
            },
            Value::Array(a) => match s.parse::<usize>().ok().and_then(|i| a.get(i)) {
                Some(v) => v,
                None => return Vec::new(),
            },
            _ => return Vec::new(),
        };
    }
    // Follow a $ref at the object itself.
    if let Some(r) = cur.get("$ref").and_then(Value::as_str)
        && let Some(name) = r.strip_prefix("#/definitions/")
        && let Some(d) = schema.get("definitions").and_then(|d| d.get(name))
    {
        cur = d;
    }
    cur.get("properties")
        .and_then(Value::as_object)
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

fn report(c: &Compiled, root: &Node, err: &ValidationError<'_>, out: &mut Diagnostics) {
    let segs = segments(err.instance_path());
    let (node, key_pos) = root.locate(&segs);
    let path = key_path(root, &segs);
    let schema_path = err.schema_path().as_str().to_string();
    let def = definition(&schema_path);
    let expected_def = def.and_then(expected_of);
    let pos = node.pos.clone();
    let msg = match err.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let allowed = allowed_keys(&c.schema, &schema_path);
            for key in unexpected {
                let kpos = node.key_pos(key).cloned().unwrap_or_else(|| pos.clone());
                let hint = did_you_mean(key, allowed.iter().copied());
                let what = if path.is_empty() {
                    "at the top level".to_string()
                } else {
                    format!("in `{path}`")
                };
                let msg = if allowed.is_empty() {
                    format!("`{key}` is not allowed {what}{hint}")
                } else {
                    format!("unknown key `{key}` {what}{hint}")
                };
                let qk = super::validate::quote_key(key);
                let kp = if path.is_empty() {
                    qk.clone()
                } else {
                    format!("{path}.{qk}")
                };
                // Under a map of user-chosen names, the key is a name that breaks the rules.
                let named = [
                    "services", "networks", "volumes", "secrets", "configs", "disks", "models",
                ];
                if allowed.is_empty() && named.contains(&path.as_str()) {
                    let what = &path[..path.len() - 1];
                    out.push(Diagnostic::new(
                        kpos,
                        kp,
                        format!(
                            "invalid {what} name `{key}`: use letters, digits, `.`, `_` and `-`"
                        ),
                    ));
                    continue;
                }
                out.push(Diagnostic::new(kpos, kp, msg));
            }
            return;
        }
        ValidationErrorKind::Type { kind } => {
            let want = match (expected_def, kind) {
                (Some(e), _) => e.to_string(),
                (None, TypeKind::Single(t)) => type_words(*t).to_string(),
                (None, TypeKind::Multiple(set)) => {
                    let words: Vec<&str> = set.iter().map(type_words).collect();
                    words.join(" or ")
                }
            };
            let found = match &node.kind {
                Kind::Str(_) | Kind::Int(_) | Kind::Float(_) | Kind::Bool(_) => {
                    format!("{} {}", node.type_name(), self::found(node))
                }
                _ => node.type_name().to_string(),
            };
            format!("expected {want}, found {found}")
        }
        ValidationErrorKind::Pattern { pattern } => {
            match expected_def.or_else(|| expected_of_key(&segs)) {
                Some(e) => format!("expected {e}, found {}", found(node)),
                None if path.starts_with("services.") && segs.len() == 2 => {
                    "a service name may use only letters, digits, `.`, `_` and `-`".to_string()
                }
                None => format!(
                    "expected a value matching `{pattern}`, found {}",
                    found(node)
                ),
            }
        }
        ValidationErrorKind::Enum { options } => {
            let opts: Vec<String> = options
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|v| {
                            v.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| v.to_string())
                        })
                        .collect()
                })
                .unwrap_or_default();
            let hint = node
                .as_str()
                .map(|s| did_you_mean(s, opts.iter().map(String::as_str)))
                .unwrap_or_default();
            format!(
                "expected one of {}, found {}{hint}",
                opts.join(", "),
                found(node)
            )
        }
        ValidationErrorKind::Required { property } => {
            let p = property
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| property.to_string());
            match def {
                Some("disk") => {
                    let kind = node.get("kind").and_then(Node::as_str).unwrap_or("private");
                    format!("a {kind} disk needs `{p}`")
                }
                _ => format!("missing required key `{p}`"),
            }
        }
        ValidationErrorKind::Minimum { limit }
        | ValidationErrorKind::ExclusiveMinimum { limit } => match expected_def {
            Some(e) => format!("expected {e}, found {}", found(node)),
            None => format!("expected at least {limit}, found {}", found(node)),
        },
        ValidationErrorKind::Maximum { limit }
        | ValidationErrorKind::ExclusiveMaximum { limit } => {
            format!("expected at most {limit}, found {}", found(node))
        }
        ValidationErrorKind::UniqueItems => {
            let mut seen = Vec::new();
            let mut dup = None;
            if let Some(items) = node.as_seq() {
                for it in items {
                    let j = it.to_json();
                    if seen.contains(&j) {
                        dup = Some(found(it));
                        break;
                    }
                    seen.push(j);
                }
            }
            match dup {
                Some(d) => format!("list items must be unique, but {d} appears twice"),
                None => "list items must be unique".to_string(),
            }
        }
        ValidationErrorKind::MinItems { limit } => format!("expected at least {limit} item(s)"),
        ValidationErrorKind::MaxItems { limit } => format!("expected at most {limit} item(s)"),
        ValidationErrorKind::MinProperties { limit } => {
            format!("expected at least {limit} key(s)")
        }
        ValidationErrorKind::MinLength { .. } => {
            format!("expected a non-empty string, found {}", found(node))
        }
        ValidationErrorKind::Not { .. } | ValidationErrorKind::Constant { .. } => {
            match expected_def {
                Some(e) => format!("expected {e}, found {}", found(node)),
                None => format!("{} is not allowed here", found(node)),
            }
        }
        ValidationErrorKind::OneOfNotValid { context } | ValidationErrorKind::AnyOf { context } => {
            // Report the branch that got furthest: the one whose errors are deepest, i.e. whose
            // type matched. If every branch failed on the type, say which types would do.
            let best = context
                .iter()
                .filter(|branch| !branch.is_empty())
                .max_by_key(|branch| {
                    let depth = branch
                        .iter()
                        .map(|e| segments(e.instance_path()).len())
                        .max()
                        .unwrap_or(0);
                    let type_only = branch
                        .iter()
                        .all(|e| matches!(e.kind(), ValidationErrorKind::Type { .. }));
                    (depth, !type_only, usize::MAX - branch.len())
                });
            let all_type = context.iter().all(|b| {
                b.iter()
                    .all(|e| matches!(e.kind(), ValidationErrorKind::Type { .. }))
            });
            match best {
                Some(branch) if !all_type => {
                    for e in branch {
                        report(c, root, e, out);
                    }
                    return;
                }
                _ => match expected_def {
                    Some(e) => format!("expected {e}, found {}", found(node)),
                    None => format!("{} does not fit any of the allowed forms here", found(node)),
                },
            }
        }
        other => format!("invalid value {}: {other:?}", found(node)),
    };
    let _ = key_pos;
    out.push(Diagnostic::new(pos, path, msg));
}
