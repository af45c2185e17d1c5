//! Deserializers that turn every short syntax into its long form while the typed model is built.
//! The JSON Schema has already checked the shapes; these read the values (ports, sizes,
//! durations ...) and say precisely what is wrong with one that does not parse.

use std::collections::BTreeMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::units;

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

pub fn bool_of(v: &Value) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err(format!("expected true or false, found `{s}`")),
        },
        other => Err(format!("expected true or false, found {}", kind(other))),
    }
}

pub fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(v) => bool_of(&v).map(Some).map_err(D::Error::custom),
    }
}

pub fn i64_of(v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .ok_or_else(|| format!("expected a whole number, found {n}")),
        Value::String(s) => s
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("expected a whole number, found `{s}`")),
        other => Err(format!("expected a whole number, found {}", kind(other))),
    }
}

pub fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(v) => i64_of(&v).map(Some).map_err(D::Error::custom),
    }
}

/// A count that cannot be negative (`replicas`, `scale`, `retries`).
pub fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let n = i64_of(&v).map_err(D::Error::custom)?;
            u32::try_from(n)
                .map(Some)
                .map_err(|_| D::Error::custom(format!("expected a count of 0 or more, found {n}")))
        }
    }
}

/// A required count (`blkio_config`'s weights and iops): a whole number, also as a string.
pub fn u32_of_any<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = i64_of(&Value::deserialize(d)?).map_err(D::Error::custom)?;
    u32::try_from(n).map_err(|_| D::Error::custom(format!("expected 0 or more, found {n}")))
}

pub fn u64_of_any<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = i64_of(&Value::deserialize(d)?).map_err(D::Error::custom)?;
    u64::try_from(n).map_err(|_| D::Error::custom(format!("expected 0 or more, found {n}")))
}

/// A required size (`blkio_config`'s byte rates: `12mb` or a number of bytes).
pub fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    size_of(&Value::deserialize(d)?).map_err(D::Error::custom)
}

/// A number that cannot be negative (`cpu_shares`, `cpu_period`, `mem_swappiness`).
pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let n = i64_of(&v).map_err(D::Error::custom)?;
            u64::try_from(n)
                .map(Some)
                .map_err(|_| D::Error::custom(format!("expected 0 or more, found {n}")))
        }
    }
}

pub fn f64_of(v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| format!("expected a number, found {n}")),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .ok_or_else(|| format!("expected a number, found `{s}`")),
        other => Err(format!("expected a number, found {}", kind(other))),
    }
}

/// `cpus: "0.5"`, `cpus: 1.5`: a non-negative number of CPUs.
pub fn opt_cpus<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let f = f64_of(&v).map_err(|_| {
                D::Error::custom(format!(
                    "expected a number of CPUs like 0.5 or 2, found {}",
                    text(&v)
                        .map(|t| format!("`{t}`"))
                        .unwrap_or_else(|| kind(&v).into())
                ))
            })?;
            if f < 0.0 {
                return Err(D::Error::custom(format!(
                    "expected a number of CPUs of 0 or more, found {f}"
                )));
            }
            Ok(Some(f))
        }
    }
}

pub fn size_of(v: &Value) -> Result<u64, String> {
    match v {
        Value::Number(n) => match n.as_i64() {
            Some(i) if i >= 0 => Ok(i as u64),
            Some(i) => Err(format!("expected a size of 0 or more, found {i}")),
            None => n
                .as_f64()
                .filter(|f| *f >= 0.0)
                .map(|f| f.round() as u64)
                .ok_or_else(|| format!("expected a size of 0 or more, found {n}")),
        },
        Value::String(s) => {
            if s.trim_start().starts_with('-') {
                return Err(format!("expected a size of 0 or more, found `{s}`"));
            }
            units::parse_size(s)
        }
        other => Err(format!(
            "expected a size like 512m or 1g, found {}",
            kind(other)
        )),
    }
}

pub fn opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(v) => size_of(&v).map(Some).map_err(D::Error::custom),
    }
}

/// `memswap_limit`: a size, or -1 for unlimited swap.
pub fn opt_swap<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(v) if i64_of(&v) == Ok(-1) => Ok(Some(-1)),
        Some(v) => size_of(&v)
            .map_err(|e| format!("{e} (or -1 for unlimited swap)"))
            .and_then(|s| i64::try_from(s).map_err(|_| "size too large".to_string()))
            .map(Some)
            .map_err(D::Error::custom),
    }
}

pub fn opt_rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("expected a rate of 0 or more, found {n}"))),
        Some(Value::String(s)) => units::parse_rate(&s).map(Some).map_err(D::Error::custom),
        Some(other) => Err(D::Error::custom(format!(
            "expected a rate like 10mbit, found {}",
            kind(&other)
        ))),
    }
}

/// A string, or a list of strings; a string is split like a shell would (`command`,
/// `entrypoint`).
pub fn opt_command<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => shell_split(&s).map(Some).map_err(D::Error::custom),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| text(i).ok_or_else(|| format!("expected a string, found {}", kind(i))))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
            .map_err(D::Error::custom),
        Some(other) => Err(D::Error::custom(format!(
            "expected a command as a string or a list of strings, found {}",
            kind(&other)
        ))),
    }
}

/// A command that must be there (a hook's): a string (split shell-style) or a list.
pub fn command<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    match opt_command(d)? {
        Some(c) if !c.is_empty() => Ok(c),
        _ => Err(D::Error::custom("expected a command to run, found nothing")),
    }
}

/// Splits a command line the way a POSIX shell splits words (quotes and backslashes), without
/// expanding anything.
pub fn shell_split(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => cur.push(x),
                        None => return Err(format!("unterminated single quote in `{s}`")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(x @ ('"' | '\\' | '$' | '`')) => cur.push(x),
                            Some(x) => {
                                cur.push('\\');
                                cur.push(x)
                            }
                            None => return Err(format!("unterminated double quote in `{s}`")),
                        },
                        Some(x) => cur.push(x),
                        None => return Err(format!("unterminated double quote in `{s}`")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(x) = chars.next() {
                    cur.push(x);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// A string or a list of strings, as a list.
pub fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| text(i).ok_or_else(|| format!("expected a string, found {}", kind(i))))
            .collect::<Result<Vec<_>, _>>()
            .map_err(D::Error::custom),
        Some(v) => text(&v).map(|t| vec![t]).ok_or_else(|| {
            D::Error::custom(format!("expected a string or a list, found {}", kind(&v)))
        }),
    }
}

/// `KEY=VALUE` list or mapping, as a mapping; `KEY` alone (no `=`) and null map to None.
pub fn dict_opt<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Option<String>>, D::Error> {
    let mut out = BTreeMap::new();
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for i in items {
                let t = text(&i).ok_or_else(|| {
                    D::Error::custom(format!("expected `KEY=VALUE`, found {}", kind(&i)))
                })?;
                match t.split_once('=') {
                    // `DEBUG = true` would set `DEBUG ` to ` true`: refused, as Compose does.
                    Some((k, v))
                        if k.ends_with(char::is_whitespace)
                            || v.starts_with(char::is_whitespace) =>
                    {
                        return Err(D::Error::custom(format!(
                            "`{t}`: no spaces around `=` (write `{}={}`)",
                            k.trim_end(),
                            v.trim_start()
                        )));
                    }
                    Some((k, v)) => out.insert(k.to_string(), Some(v.to_string())),
                    None => out.insert(t, None),
                };
            }
        }
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let v = match v {
                    Value::Null => None,
                    other => Some(text(&other).ok_or_else(|| {
                        D::Error::custom(format!(
                            "expected a string, number or boolean for `{k}`, found {}",
                            kind(&other)
                        ))
                    })?),
                };
                out.insert(k, v);
            }
        }
        Some(other) => {
            return Err(D::Error::custom(format!(
                "expected a list of `KEY=VALUE` or a mapping, found {}",
                kind(&other)
            )));
        }
    }
    Ok(out)
}

/// Like `dict_opt`, for labels and the like where a missing value means the empty string.
pub fn dict<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    Ok(dict_opt(d)?
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect())
}

pub fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<units::Duration>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => units::parse_duration(&s)
            .map(Some)
            .map_err(D::Error::custom),
        Some(other) => Err(D::Error::custom(format!(
            "expected a duration like 30s or 1m30s, found {}",
            text(&other)
                .map(|t| format!("`{t}`"))
                .unwrap_or_else(|| kind(&other).into())
        ))),
    }
}
