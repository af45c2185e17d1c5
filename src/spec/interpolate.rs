//! `${VAR}` interpolation, as the Compose Specification defines it, and `.env` files.

use std::collections::BTreeMap;

use super::node::{Kind, Node, resolve_plain};

/// The variables interpolation sees. Built by the loader: `.env` (or `--env-file`s) first, then
/// the shell's environment on top, so an exported variable always wins over a file.
pub type Vars = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterpError {
    pub message: String,
}

fn err(message: impl Into<String>) -> InterpError {
    InterpError {
        message: message.into(),
    }
}

/// Expands `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?err}`, `${VAR?err}`,
/// `${VAR:+alt}`, `${VAR+alt}` (defaults and alternatives may themselves hold expansions), and
/// `$$` (a literal `$`).
pub fn interpolate(input: &str, vars: &Vars) -> Result<String, InterpError> {
    let chars: Vec<char> = input.chars().collect();
    let mut pos = 0;
    let out = expand(&chars, &mut pos, vars, false)?;
    Ok(out)
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Expands from `pos` until the end (or, when `nested`, until the `}` closing a `${...}`).
fn expand(
    chars: &[char],
    pos: &mut usize,
    vars: &Vars,
    nested: bool,
) -> Result<String, InterpError> {
    let mut out = String::new();
    let mut depth = 0usize;
    while *pos < chars.len() {
        let c = chars[*pos];
        if nested && c == '}' {
            if depth == 0 {
                return Ok(out);
            }
            depth -= 1;
        }
        if nested && c == '{' {
            depth += 1;
        }
        if c != '$' {
            out.push(c);
            *pos += 1;
            continue;
        }
        // c == '$'
        match chars.get(*pos + 1) {
            Some('$') => {
                out.push('$');
                *pos += 2;
            }
            Some('{') => {
                *pos += 2;
                out.push_str(&braced(chars, pos, vars)?);
            }
            Some(&n) if is_name_start(n) => {
                let start = *pos + 1;
                let mut end = start;
                while end < chars.len() && is_name(chars[end]) {
                    end += 1;
                }
                let name: String = chars[start..end].iter().collect();
                out.push_str(vars.get(&name).map(String::as_str).unwrap_or(""));
                *pos = end;
            }
            _ => {
                // A lone `$` (e.g. at the end, or `$1`) stays as it is, like Compose.
                out.push('$');
                *pos += 1;
            }
        }
    }
    if nested {
        return Err(err("unterminated `${`: a `}` is missing"));
    }
    Ok(out)
}

/// Parses the inside of `${...}`; `pos` is just after `${` and ends just after `}`.
fn braced(chars: &[char], pos: &mut usize, vars: &Vars) -> Result<String, InterpError> {
    let start = *pos;
    while *pos < chars.len() && is_name(chars[*pos]) {
        *pos += 1;
    }
    let name: String = chars[start..*pos].iter().collect();
    if *pos >= chars.len() {
        return Err(err(format!("unterminated `${{{name}`: a `}}` is missing")));
    }
    if name.is_empty() || !is_name_start(chars[start]) {
        let rest: String = chars[start..].iter().take_while(|c| **c != '}').collect();
        return Err(err(format!(
            "invalid variable name in `${{{rest}}}`: a name is letters, digits and `_`, not starting with a digit"
        )));
    }
    let value = vars.get(&name);
    let c = chars[*pos];
    if c == '}' {
        *pos += 1;
        return Ok(value.cloned().unwrap_or_default());
    }
    let colon = c == ':';
    let op_at = if colon { *pos + 1 } else { *pos };
    let Some(&op) = chars.get(op_at) else {
        return Err(err(format!("unterminated `${{{name}`: a `}}` is missing")));
    };
    if !matches!(op, '-' | '?' | '+') {
        return Err(err(format!(
            "invalid expansion `${{{name}{}{op}...}}`: after the name berth expects `}}`, `:-`, `-`, `:?`, `?`, `:+` or `+`",
            if colon { ":" } else { "" }
        )));
    }
    *pos = op_at + 1;
    // The word after the operator is expanded only if it is used, but parsed either way.
    let word = expand(chars, pos, vars, true)?;
    *pos += 1; // the closing brace
    let set = value.is_some();
    let nonempty = value.is_some_and(|v| !v.is_empty());
    let present = if colon { nonempty } else { set };
    Ok(match op {
        '-' => {
            if present {
                value.cloned().unwrap_or_default()
            } else {
                word
            }
        }
        '+' => {
            if present {
                word
            } else {
                String::new()
            }
        }
        _ => {
            if present {
                value.cloned().unwrap_or_default()
            } else {
                let why = if word.is_empty() {
                    format!(
                        "required variable {name} is {}",
                        if set { "empty" } else { "not set" }
                    )
                } else {
                    format!("required variable {name}: {word}")
                };
                return Err(err(why));
            }
        }
    })
}

/// Interpolates every scalar string of a tree in place (values only; keys are left alone, as in
/// Compose). Plain scalars are typed again afterwards. Errors carry the node's position.
pub fn interpolate_tree(
    node: &mut Node,
    vars: &Vars,
    path: &str,
    errors: &mut Vec<super::diag::Diagnostic>,
) {
    let mut segs: Vec<Seg> = Vec::new();
    walk(node, vars, path, &mut segs, errors);
}

/// A path segment, kept unformatted: the path text is built only for an error.
enum Seg {
    Key(String),
    Index(usize),
}

fn walk(
    node: &mut Node,
    vars: &Vars,
    base: &str,
    segs: &mut Vec<Seg>,
    errors: &mut Vec<super::diag::Diagnostic>,
) {
    match &mut node.kind {
        Kind::Str(s) => {
            if !s.contains('$') {
                return;
            }
            match interpolate(s, vars) {
                Ok(v) => {
                    // An empty result stays an empty string: `A: ${UNSET}` is "", not null.
                    node.kind = if node.plain && !v.is_empty() {
                        resolve_plain(&v)
                    } else {
                        Kind::Str(v)
                    };
                }
                Err(e) => {
                    let mut path = base.to_string();
                    for s in segs.iter() {
                        match s {
                            Seg::Key(k) => {
                                path = super::diag::join_path(&path, &super::validate::quote_key(k))
                            }
                            Seg::Index(i) => path = super::diag::index_path(&path, *i),
                        }
                    }
                    errors.push(super::diag::Diagnostic::new(
                        node.pos.clone(),
                        path,
                        e.message,
                    ))
                }
            }
        }
        Kind::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                segs.push(Seg::Index(i));
                walk(item, vars, base, segs, errors);
                segs.pop();
            }
        }
        Kind::Map(entries) => {
            for (k, v) in entries.iter_mut() {
                // Extension fields are the user's own: Compose interpolates them too.
                if v.as_map().is_none()
                    && v.as_seq().is_none()
                    && v.as_str().is_none_or(|s| !s.contains('$'))
                {
                    continue;
                }
                segs.push(Seg::Key(k.name.clone()));
                walk(v, vars, base, segs, errors);
                segs.pop();
            }
        }
        _ => {}
    }
}

/// One line of a `.env`-style file that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DotenvError {
    pub line: usize,
    pub message: String,
}

/// Parses a `.env` / `env_file` file: `KEY=VALUE`, `export KEY=VALUE`, `# comments`, single
/// quotes (literal), double quotes (escapes, interpolation), unquoted values with trailing
/// ` # comments` removed, and `KEY` alone (taken from `lookup`, left out when absent).
/// With `raw`, values are taken exactly as written (Compose's `format: raw`).
pub fn parse_dotenv(
    text: &str,
    raw: bool,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, Option<String>)>, DotenvError> {
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    // A byte-order mark, as editors on some systems write one.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let lineno = i + 1;
        let line = lines[i].trim_start();
        i += 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // `export KEY=...`, with a space or a tab after `export`.
        let line = match line.strip_prefix("export") {
            Some(r) if r.starts_with([' ', '\t']) => r.trim_start(),
            _ => line,
        };
        // `KEY=VALUE`, or `KEY: VALUE` as compose-go also reads.
        let (key, rest) = match line.find(['=', ':']) {
            Some(at) if line[at..].starts_with('=') => (line[..at].trim(), Some(&line[at + 1..])),
            Some(at) => (
                line[..at].trim(),
                Some(line[at + 1..].strip_prefix(' ').unwrap_or(&line[at + 1..])),
            ),
            None => (line.trim(), None),
        };
        let key_char = |c: char| c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | '[' | ']');
        if key.is_empty() || !key.chars().all(key_char) {
            return Err(DotenvError {
                line: lineno,
                message: format!("expected KEY=VALUE, found `{}`", lines[lineno - 1]),
            });
        }
        let Some(rest) = rest else {
            // Named alone: its value from the environment, or left out when it has none.
            if let Some(v) = lookup(key) {
                out.push((key.to_string(), Some(v)));
            }
            continue;
        };
        if raw {
            out.push((key.to_string(), Some(rest.to_string())));
            continue;
        }
        let rest = rest.trim_start();
        let value = if let Some(body) = rest.strip_prefix('\'') {
            // Single quotes: literal but for `\'`, may span lines.
            let mut acc = body.to_string();
            loop {
                if let Some(end) = find_unescaped(&acc, '\'') {
                    acc.truncate(end);
                    break acc.replace("\\'", "'");
                }
                match lines.get(i) {
                    Some(next) => {
                        acc.push('\n');
                        acc.push_str(next);
                        i += 1;
                    }
                    None => {
                        return Err(DotenvError {
                            line: lineno,
                            message: "unterminated single quote".into(),
                        });
                    }
                }
            }
        } else if let Some(body) = rest.strip_prefix('"') {
            let mut acc = body.to_string();
            loop {
                if let Some(end) = find_unescaped(&acc, '"') {
                    acc.truncate(end);
                    break;
                }
                match lines.get(i) {
                    Some(next) => {
                        acc.push('\n');
                        acc.push_str(next);
                        i += 1;
                    }
                    None => {
                        return Err(DotenvError {
                            line: lineno,
                            message: "unterminated double quote".into(),
                        });
                    }
                }
            }
            let unescaped = unescape(&acc);
            expand_with(&unescaped, &out, lookup).map_err(|e| DotenvError {
                line: lineno,
                message: e.message,
            })?
        } else {
            let v = match rest.find(" #").or_else(|| rest.find("\t#")) {
                Some(c) => &rest[..c],
                None => rest,
            };
            expand_with(v.trim_end(), &out, lookup).map_err(|e| DotenvError {
                line: lineno,
                message: e.message,
            })?
        };
        out.push((key.to_string(), Some(value)));
    }
    Ok(out)
}

fn find_unescaped(s: &str, quote: char) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            c if c == quote && !escaped => return Some(i),
            _ => escaped = false,
        }
    }
    None
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('"') => out.push('"'),
            Some('\\') => out.push('\\'),
            Some('a') => out.push('\u{7}'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('v') => out.push('\u{b}'),
            // `\0NNN`: an octal byte (up to three digits after the 0).
            Some('0') => {
                let mut n: u32 = 0;
                for _ in 0..3 {
                    match it.clone().next().and_then(|d| d.to_digit(8)) {
                        Some(d) => {
                            n = n * 8 + d;
                            it.next();
                        }
                        None => break,
                    }
                }
                out.push(char::from_u32(n).unwrap_or('\u{fffd}'));
            }
            Some('$') => out.push_str("$$"),
            Some(o) => {
                out.push('\\');
                out.push(o);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// Interpolates a dotenv value against the keys defined above it, then the lookup.
fn expand_with(
    v: &str,
    defined: &[(String, Option<String>)],
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, InterpError> {
    if !v.contains('$') {
        return Ok(v.to_string());
    }
    let mut vars = Vars::new();
    // Only names mentioned need resolving; collect cheaply by scanning all candidates.
    for (k, val) in defined {
        if let Some(val) = val {
            vars.insert(k.clone(), val.clone());
        }
    }
    let mut names = Vec::new();
    let chars: Vec<char> = v.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if is_name_start(chars[i]) {
            let s = i;
            while i < chars.len() && is_name(chars[i]) {
                i += 1;
            }
            names.push(chars[s..i].iter().collect::<String>());
        } else {
            i += 1;
        }
    }
    for n in names {
        if let Some(val) = lookup(&n) {
            vars.insert(n, val);
        }
    }
    interpolate(v, &vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        let mut v = Vars::new();
        v.insert("SET".into(), "yes".into());
        v.insert("EMPTY".into(), String::new());
        v
    }

    fn i(s: &str) -> Result<String, InterpError> {
        interpolate(s, &vars())
    }

    #[test]
    fn all_forms() {
        assert_eq!(i("$SET ${SET}").unwrap(), "yes yes");
        assert_eq!(i("${UNSET:-d} ${EMPTY:-d} ${EMPTY-d}").unwrap(), "d d ");
        assert_eq!(
            i("${SET:+alt} ${EMPTY:+alt} ${EMPTY+alt}").unwrap(),
            "alt  alt"
        );
        assert_eq!(i("${UNSET:-${ALSO:-${SET}}}").unwrap(), "yes");
        assert_eq!(i("$$SET $${SET}").unwrap(), "$SET ${SET}");
        assert_eq!(i("${SET:?boom}").unwrap(), "yes");
        assert_eq!(i("cost: 5$").unwrap(), "cost: 5$");
        assert_eq!(i("${UNSET:-a}-${UNSET:-{b}}").unwrap(), "a-{b}");
    }

    #[test]
    fn errors() {
        assert_eq!(
            i("${UNSET:?needs a value}").unwrap_err().message,
            "required variable UNSET: needs a value"
        );
        assert!(i("${EMPTY:?}").unwrap_err().message.contains("is empty"));
        assert!(i("${EMPTY?}").is_ok());
        assert!(i("${UNSET").unwrap_err().message.contains("unterminated"));
        assert!(
            i("${UNSET:-abc")
                .unwrap_err()
                .message
                .contains("unterminated")
        );
        assert!(
            i("${1X}")
                .unwrap_err()
                .message
                .contains("invalid variable name")
        );
        assert!(
            i("${X:=y}")
                .unwrap_err()
                .message
                .contains("invalid expansion")
        );
    }

    #[test]
    fn dotenv() {
        let text = "# c\nexport A=1\nB='lit $A'\nC=\"q $A\\n\"\nD=x # comment\nE\nF=${A}2\nG=\"multi\nline\"\n";
        let look = |k: &str| (k == "E").then(|| "from-shell".to_string());
        let got = parse_dotenv(text, false, &look).unwrap();
        let m: BTreeMap<_, _> = got.into_iter().collect();
        assert_eq!(m["A"].as_deref(), Some("1"));
        assert_eq!(m["B"].as_deref(), Some("lit $A"));
        assert_eq!(m["C"].as_deref(), Some("q 1\n"));
        assert_eq!(m["D"].as_deref(), Some("x"));
        assert_eq!(m["E"].as_deref(), Some("from-shell"));
        assert_eq!(m["F"].as_deref(), Some("12"));
        assert_eq!(m["G"].as_deref(), Some("multi\nline"));
        let raw = parse_dotenv("A='x' # y\n", true, &look).unwrap();
        assert_eq!(raw[0].1.as_deref(), Some("'x' # y"));
        assert!(parse_dotenv("not a line\n", false, &look).is_err());
    }

    #[test]
    fn dotenv_reads_what_compose_go_reads() {
        let look = |k: &str| (k == "SET").then(|| "shell".to_string());
        let text = "\u{feff}A='it\\'s'\nB: colon value\nexport\tC=tab\nx.y-z[0]=odd\nGRÜN=ja\nD=\"\\a\\b\\f\\v\\0101\"\nUNSET\nSET\nURL=http://h:1/p\n";
        let m: BTreeMap<_, _> = parse_dotenv(text, false, &look)
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(m["A"].as_deref(), Some("it's"));
        assert_eq!(m["B"].as_deref(), Some("colon value"));
        assert_eq!(m["C"].as_deref(), Some("tab"));
        assert_eq!(m["x.y-z[0]"].as_deref(), Some("odd"));
        assert_eq!(m["GRÜN"].as_deref(), Some("ja"));
        assert_eq!(m["D"].as_deref(), Some("\u{7}\u{8}\u{c}\u{b}A"));
        assert_eq!(m["URL"].as_deref(), Some("http://h:1/p"));
        // Named without a value: from the environment, or not there at all.
        assert_eq!(m["SET"].as_deref(), Some("shell"));
        assert!(!m.contains_key("UNSET"));
        // An unterminated quote names its line.
        let e = parse_dotenv("A=1\nB=\"open\nC=2\n", false, &look).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(
            e.message.contains("unterminated double quote"),
            "{}",
            e.message
        );
    }
}
