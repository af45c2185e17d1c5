//! The Dockerfile, parsed: stages of instructions, each with the line it starts on, so every
//! later error (a failed `RUN`, a missing `COPY` source) can name `Dockerfile:LINE`.
//!
//! What the parser handles is the Dockerfile reference's syntax: parser directives
//! (`# escape=`, `# syntax=` recorded), comments, line continuations with the escape
//! character, heredocs (`<<EOF`, `<<-EOF`, quoted delimiters), exec (JSON) and shell forms,
//! flags (`--from=`, `--chown=`, ...), `ONBUILD`, and `ARG`s before the first `FROM`.
//! Variables are left as written: they are expanded at build time, step by step, with
//! [`expand`], because their values depend on the `ARG`s and `ENV`s above each step.

use std::collections::HashMap;

/// A parse error, with the line it is on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ParseError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// Shell form (run by the stage's `SHELL`, `/bin/sh -c` by default) or exec form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Shell(String),
    Exec(Vec<String>),
}

/// A heredoc attached to an instruction: its name (the delimiter), its body, and whether
/// variables in it are expanded (an unquoted delimiter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    pub name: String,
    pub body: String,
    pub expand: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// `ADD` rather than `COPY` (URLs fetched, local tar archives unpacked).
    pub add: bool,
    /// `ADD --checksum=sha256:<hex>`: what a fetched URL must hash to.
    pub checksum: Option<String>,
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub sources: Vec<String>,
    pub dest: String,
    /// `COPY <<EOF /dest`: the files are heredocs, named by their delimiters.
    pub heredocs: Vec<Heredoc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub start_period: Option<String>,
    pub start_interval: Option<String>,
    pub retries: Option<String>,
    pub cmd: Command,
}

/// What `RUN --mount=type=...` mounts for the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    /// Files of the context (or of `from`, a stage or an image), read-only unless `rw`
    /// (then writes go to a throw-away copy).
    Bind,
    /// A directory kept between builds (by `id`, default the target), never in the image.
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

/// One `RUN --mount=` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunMount {
    pub kind: MountKind,
    pub target: String,
    pub source: Option<String>,
    pub from: Option<String>,
    pub id: Option<String>,
    pub read_write: bool,
    pub size: Option<u64>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// Parses the value of one `--mount=` (`type=cache,target=/root/.cache,id=pip`).
fn parse_mount(v: &str) -> Result<RunMount, String> {
    let mut m = RunMount {
        kind: MountKind::Bind,
        target: String::new(),
        source: None,
        from: None,
        id: None,
        read_write: false,
        size: None,
        mode: None,
        uid: None,
        gid: None,
    };
    let mut explicit_rw: Option<bool> = None;
    for part in v.split(',').filter(|p| !p.is_empty()) {
        let (k, val) = part.split_once('=').unwrap_or((part, ""));
        let num = |what: &str| -> Result<u32, String> {
            val.parse()
                .map_err(|_| format!("--mount {k}={val}: expected a number for {what}"))
        };
        match k {
            "type" => {
                m.kind = match val {
                    "bind" => MountKind::Bind,
                    "cache" => MountKind::Cache,
                    "tmpfs" => MountKind::Tmpfs,
                    "secret" => MountKind::Secret,
                    "ssh" => MountKind::Ssh,
                    other => {
                        return Err(format!(
                            "--mount type={other}: expected bind, cache, tmpfs, secret or ssh"
                        ));
                    }
                };
            }
            "target" | "dst" | "destination" => m.target = val.to_string(),
            "source" | "src" => m.source = Some(val.to_string()),
            "from" => m.from = Some(val.to_string()),
            "id" => m.id = Some(val.to_string()),
            "rw" | "readwrite" => explicit_rw = Some(val != "false"),
            "ro" | "readonly" => explicit_rw = Some(val == "false"),
            "size" => {
                m.size = Some(
                    crate::spec::units::parse_size(val)
                        .map_err(|e| format!("--mount size={val}: {e}"))?,
                )
            }
            "mode" => {
                m.mode = Some(
                    u32::from_str_radix(val, 8)
                        .map_err(|_| format!("--mount mode={val}: expected octal"))?,
                )
            }
            "uid" => m.uid = Some(num("uid")?),
            "gid" => m.gid = Some(num("gid")?),
            // BuildKit's sharing modes: berth runs one step at a time per build, and
            // builds of one state root share the directory as `shared` does.
            "sharing" | "required" => {}
            other => return Err(format!("--mount: unknown option `{other}`")),
        }
    }
    m.read_write = explicit_rw.unwrap_or(matches!(m.kind, MountKind::Cache | MountKind::Tmpfs));
    if m.target.is_empty() && !matches!(m.kind, MountKind::Secret | MountKind::Ssh) {
        return Err(format!("--mount {v}: it needs target=PATH"));
    }
    Ok(m)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    Run {
        command: Command,
        /// `--network=`; a `--security` flag is refused, not ignored.
        network: Option<String>,
        /// `--mount=` flags, in order.
        mounts: Vec<RunMount>,
        heredocs: Vec<Heredoc>,
    },
    Copy(Copy),
    Env(Vec<(String, String)>),
    Arg(Vec<(String, Option<String>)>),
    Workdir(String),
    User(String),
    Label(Vec<(String, String)>),
    Expose(Vec<String>),
    Volume(Vec<String>),
    Cmd(Command),
    Entrypoint(Command),
    /// `HEALTHCHECK NONE` is `None`.
    Healthcheck(Option<Health>),
    Shell(Vec<String>),
    StopSignal(String),
    /// Recorded in the image, run by images built `FROM` this one.
    Onbuild(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub line: usize,
    /// The instruction as written (continuations joined), for progress lines and cache keys.
    pub text: String,
    pub instruction: Instruction,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub line: usize,
    /// `FROM image`: an image reference, `scratch`, `host`, or an earlier stage's name.
    pub base: String,
    pub platform: Option<String>,
    pub name: Option<String>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dockerfile {
    /// `ARG`s before the first `FROM`: usable in `FROM` lines.
    pub global_args: Vec<(String, Option<String>)>,
    pub stages: Vec<Stage>,
    /// `# syntax=` as written (recorded; berth has one built-in frontend).
    pub syntax: Option<String>,
}

impl Dockerfile {
    /// The index of the stage a `target` names (the last stage without one).
    pub fn target(&self, target: Option<&str>) -> Option<usize> {
        match target {
            None => self.stages.len().checked_sub(1),
            Some(t) => self
                .stages
                .iter()
                .position(|s| s.name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(t))),
        }
    }
}

struct Parser<'a> {
    file: &'a str,
    lines: Vec<&'a str>,
    at: usize,
    escape: char,
}

impl Parser<'_> {
    fn err(&self, line: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            file: self.file.to_string(),
            line,
            message: message.into(),
        }
    }

    /// The next logical line: its first line number and its text, continuations joined.
    /// Comment lines inside a continuation are dropped, as Docker does.
    fn logical(&mut self) -> Option<(usize, String)> {
        while self.at < self.lines.len() {
            let line = self.lines[self.at];
            let t = line.trim_start();
            if t.is_empty() || t.starts_with('#') {
                self.at += 1;
                continue;
            }
            break;
        }
        if self.at >= self.lines.len() {
            return None;
        }
        let first = self.at + 1;
        let mut out = String::new();
        while self.at < self.lines.len() {
            let line = self.lines[self.at];
            self.at += 1;
            let trimmed = line.trim_end();
            if !out.is_empty() && trimmed.trim_start().starts_with('#') {
                continue;
            }
            match trimmed.strip_suffix(self.escape) {
                Some(head) => {
                    out.push_str(head);
                    // A continuation at the very end of the file ends the instruction.
                }
                None => {
                    out.push_str(trimmed);
                    return Some((first, out));
                }
            }
        }
        Some((first, out))
    }

    /// The bodies of the heredocs `words` open, read from the lines that follow.
    fn heredocs(&mut self, line: usize, text: &str) -> Result<Vec<Heredoc>, ParseError> {
        let mut out = Vec::new();
        let mut rest = text;
        while let Some(i) = rest.find("<<") {
            // Only a word that starts with `<<` opens a heredoc (`echo "a<<b"` does not).
            let at_word = rest[..i].chars().last().is_none_or(char::is_whitespace);
            let after = &rest[i + 2..];
            if !at_word {
                rest = after;
                continue;
            }
            let (strip_tabs, after) = match after.strip_prefix('-') {
                Some(a) => (true, a),
                None => (false, after),
            };
            let (quoted, after) = match after.chars().next() {
                Some(q @ ('"' | '\'')) => (Some(q), &after[1..]),
                _ => (None, after),
            };
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'))
                .unwrap_or(after.len());
            let name = &after[..end];
            rest = &after[end..];
            if let Some(q) = quoted {
                rest = rest.strip_prefix(q).unwrap_or(rest);
            }
            if name.is_empty() {
                continue;
            }
            let mut body = String::new();
            let mut closed = false;
            while self.at < self.lines.len() {
                let l = self.lines[self.at];
                self.at += 1;
                let l = if strip_tabs {
                    l.trim_start_matches('\t')
                } else {
                    l
                };
                if l == name {
                    closed = true;
                    break;
                }
                body.push_str(l);
                body.push('\n');
            }
            if !closed {
                return Err(self.err(
                    line,
                    format!("the heredoc `<<{name}` is never closed (no line `{name}`)"),
                ));
            }
            out.push(Heredoc {
                name: name.to_string(),
                body,
                expand: quoted.is_none(),
            });
        }
        Ok(out)
    }
}

/// Parses `text` (the contents of `file`, named in errors).
pub fn parse(file: &str, text: &str) -> Result<Dockerfile, ParseError> {
    let mut df = Dockerfile::default();
    let mut escape = '\\';
    // Parser directives: `# key=value` lines at the very top, before anything else.
    for line in text.lines() {
        let Some(d) = line.trim().strip_prefix('#') else {
            break;
        };
        let Some((k, v)) = d.split_once('=') else {
            break;
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "escape" => match v.trim() {
                "`" => escape = '`',
                "\\" => escape = '\\',
                other => {
                    return Err(ParseError {
                        file: file.to_string(),
                        line: 1,
                        message: format!("escape directive: expected ` or \\, found `{other}`"),
                    });
                }
            },
            "syntax" => df.syntax = Some(v.trim().to_string()),
            _ => break,
        }
    }
    let mut p = Parser {
        file,
        lines: text.lines().collect(),
        at: 0,
        escape,
    };
    while let Some((line, text)) = p.logical() {
        let text = text.trim().to_string();
        let (word, rest) = split_word(&text);
        let keyword = word.to_ascii_uppercase();
        let heredocs = if matches!(keyword.as_str(), "RUN" | "COPY" | "ADD") {
            p.heredocs(line, rest)?
        } else {
            Vec::new()
        };
        if keyword == "FROM" {
            df.stages.push(parse_from(&p, line, rest)?);
            continue;
        }
        let instruction = parse_instruction(&p, line, &keyword, rest, heredocs)?;
        match df.stages.last_mut() {
            Some(stage) => stage.steps.push(Step {
                line,
                text: text.clone(),
                instruction,
            }),
            None => match instruction {
                Instruction::Arg(a) => df.global_args.extend(a),
                _ => {
                    return Err(p.err(
                        line,
                        format!("{keyword} before the first FROM: only ARG may come before FROM"),
                    ));
                }
            },
        }
    }
    if df.stages.is_empty() {
        return Err(ParseError {
            file: file.to_string(),
            line: text.lines().count().max(1),
            message: "no FROM instruction: a Dockerfile starts its first stage with FROM".into(),
        });
    }
    Ok(df)
}

fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s, ""),
    }
}

/// Leading `--name=value` flags, and what follows them.
fn flags<'a>(
    p: &Parser<'_>,
    line: usize,
    keyword: &str,
    mut rest: &'a str,
    allowed: &[&str],
) -> Result<(HashMap<String, String>, &'a str), ParseError> {
    let mut out = HashMap::new();
    while rest.starts_with("--") {
        let (w, r) = split_word(rest);
        let (k, v) = w[2..].split_once('=').unwrap_or((&w[2..], "true"));
        if !allowed.contains(&k) {
            let hint = if allowed.is_empty() {
                String::new()
            } else {
                format!(
                    " (it takes {})",
                    allowed
                        .iter()
                        .map(|a| format!("--{a}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            return Err(p.err(line, format!("{keyword}: unknown flag --{k}{hint}")));
        }
        out.insert(k.to_string(), v.to_string());
        rest = r;
    }
    Ok((out, rest))
}

fn parse_from(p: &Parser<'_>, line: usize, rest: &str) -> Result<Stage, ParseError> {
    let (fl, rest) = flags(p, line, "FROM", rest, &["platform"])?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    let (base, name) = match words.as_slice() {
        [b] => (*b, None),
        [b, as_, n] if as_.eq_ignore_ascii_case("as") => (*b, Some(n.to_string())),
        [] => return Err(p.err(line, "FROM needs an image: `FROM busybox`, `FROM scratch`")),
        _ => {
            return Err(p.err(
                line,
                format!("FROM: expected `FROM IMAGE [AS NAME]`, found `FROM {rest}`"),
            ));
        }
    };
    if let Some(n) = &name {
        let ok = n.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !ok {
            return Err(p.err(line, format!("FROM: invalid stage name `{n}`")));
        }
    }
    Ok(Stage {
        line,
        base: base.to_string(),
        platform: fl.get("platform").cloned(),
        name,
        steps: Vec::new(),
    })
}

/// Exec form when the text is a JSON array of strings, else shell form.
fn command(rest: &str) -> Command {
    let t = rest.trim();
    if t.starts_with('[')
        && let Ok(v) = serde_json::from_str::<Vec<String>>(t)
    {
        return Command::Exec(v);
    }
    Command::Shell(t.to_string())
}

fn json_or_words(rest: &str) -> Vec<String> {
    match command(rest) {
        Command::Exec(v) => v,
        Command::Shell(s) => s.split_whitespace().map(str::to_string).collect(),
    }
}

/// Shell-like words: quotes group and are removed, the escape character escapes.
fn words(p: &Parser<'_>, line: usize, s: &str) -> Result<Vec<String>, ParseError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (q, c) if c == p.escape && q != Some('\'') => {
                in_word = true;
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (_, c) => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if quote.is_some() {
        return Err(p.err(line, format!("unterminated quote in `{s}`")));
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// `KEY=VALUE ...`, or the legacy `KEY VALUE` (one pair, the value the rest of the line).
fn pairs(
    p: &Parser<'_>,
    line: usize,
    keyword: &str,
    rest: &str,
) -> Result<Vec<(String, String)>, ParseError> {
    let (first, tail) = split_word(rest);
    if first.is_empty() {
        return Err(p.err(line, format!("{keyword} needs at least one KEY=VALUE")));
    }
    if !first.contains('=') {
        return Ok(vec![(first.to_string(), tail.to_string())]);
    }
    let mut out = Vec::new();
    for w in words(p, line, rest)? {
        match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => out.push((k.to_string(), v.to_string())),
            _ => {
                return Err(p.err(line, format!("{keyword}: expected KEY=VALUE, found `{w}`")));
            }
        }
    }
    Ok(out)
}

fn parse_instruction(
    p: &Parser<'_>,
    line: usize,
    keyword: &str,
    rest: &str,
    heredocs: Vec<Heredoc>,
) -> Result<Instruction, ParseError> {
    let need = |what: &str| -> Result<(), ParseError> {
        if rest.trim().is_empty() {
            Err(p.err(line, format!("{keyword} needs {what}")))
        } else {
            Ok(())
        }
    };
    Ok(match keyword {
        "RUN" => {
            // `--mount` may come many times: taken out before the other flags.
            let mut mounts = Vec::new();
            let mut rest = rest.trim_start();
            let mut others = String::new();
            while rest.starts_with("--") {
                let (w, r) = split_word(rest);
                match w.strip_prefix("--mount=") {
                    Some(v) => {
                        mounts.push(parse_mount(v).map_err(|e| p.err(line, format!("RUN {e}")))?)
                    }
                    None => {
                        others.push_str(w);
                        others.push(' ');
                    }
                }
                rest = r;
            }
            others.push_str(rest);
            let (fl, rest) = flags(p, line, "RUN", &others, &["network"])?;
            if rest.trim().is_empty() {
                return Err(p.err(line, "RUN needs a command"));
            }
            Instruction::Run {
                command: command(rest),
                network: fl.get("network").cloned(),
                mounts,
                heredocs,
            }
        }
        "COPY" | "ADD" => {
            let allowed: &[&str] = if keyword == "COPY" {
                &["from", "chown", "chmod", "link", "parents"]
            } else {
                &["chown", "chmod", "link", "checksum"]
            };
            let (fl, rest) = flags(p, line, keyword, rest, allowed)?;
            let mut all = match command(rest) {
                Command::Exec(v) => v,
                Command::Shell(s) => words(p, line, &s)?,
            };
            // Heredoc markers are sources named by their delimiter.
            all.retain(|w| !w.starts_with("<<"));
            let n_here = heredocs.len();
            if all.is_empty() || all.len() + n_here < 2 {
                return Err(p.err(
                    line,
                    format!("{keyword} needs at least one source and a destination: `{keyword} SRC... DEST`"),
                ));
            }
            let dest = all.pop().unwrap_or_default();
            Instruction::Copy(Copy {
                add: keyword == "ADD",
                checksum: fl.get("checksum").cloned(),
                from: fl.get("from").cloned(),
                chown: fl.get("chown").cloned(),
                chmod: fl.get("chmod").cloned(),
                sources: all,
                dest,
                heredocs,
            })
        }
        "ENV" => Instruction::Env(pairs(p, line, "ENV", rest)?),
        "LABEL" => Instruction::Label(pairs(p, line, "LABEL", rest)?),
        "MAINTAINER" => {
            need("a name")?;
            Instruction::Label(vec![("maintainer".into(), rest.trim().to_string())])
        }
        "ARG" => {
            need("a name")?;
            let mut out = Vec::new();
            for w in words(p, line, rest)? {
                match w.split_once('=') {
                    Some((k, v)) => out.push((k.to_string(), Some(v.to_string()))),
                    None => out.push((w, None)),
                }
            }
            Instruction::Arg(out)
        }
        "WORKDIR" => {
            need("a directory")?;
            Instruction::Workdir(rest.trim().to_string())
        }
        "USER" => {
            need("a user (`USER app` or `USER 1000:1000`)")?;
            Instruction::User(rest.trim().to_string())
        }
        "EXPOSE" => {
            need("a port")?;
            Instruction::Expose(rest.split_whitespace().map(str::to_string).collect())
        }
        "VOLUME" => {
            need("a path")?;
            Instruction::Volume(json_or_words(rest))
        }
        "CMD" => Instruction::Cmd(command(rest)),
        "ENTRYPOINT" => Instruction::Entrypoint(command(rest)),
        "SHELL" => match command(rest) {
            Command::Exec(v) if !v.is_empty() => Instruction::Shell(v),
            _ => {
                return Err(p.err(
                    line,
                    "SHELL takes the JSON form: SHELL [\"/bin/bash\", \"-c\"]",
                ));
            }
        },
        "STOPSIGNAL" => {
            need("a signal")?;
            Instruction::StopSignal(rest.trim().to_string())
        }
        "HEALTHCHECK" => {
            if rest.trim().eq_ignore_ascii_case("none") {
                Instruction::Healthcheck(None)
            } else {
                let (fl, rest) = flags(
                    p,
                    line,
                    "HEALTHCHECK",
                    rest,
                    &[
                        "interval",
                        "timeout",
                        "start-period",
                        "start-interval",
                        "retries",
                    ],
                )?;
                let (w, cmd) = split_word(rest);
                if !w.eq_ignore_ascii_case("cmd") || cmd.trim().is_empty() {
                    return Err(p.err(
                        line,
                        "HEALTHCHECK: expected `HEALTHCHECK [--interval=...] CMD command` or `HEALTHCHECK NONE`",
                    ));
                }
                Instruction::Healthcheck(Some(Health {
                    interval: fl.get("interval").cloned(),
                    timeout: fl.get("timeout").cloned(),
                    start_period: fl.get("start-period").cloned(),
                    start_interval: fl.get("start-interval").cloned(),
                    retries: fl.get("retries").cloned(),
                    cmd: command(cmd),
                }))
            }
        }
        "ONBUILD" => {
            let (w, _) = split_word(rest);
            let inner = w.to_ascii_uppercase();
            if matches!(inner.as_str(), "ONBUILD" | "FROM" | "MAINTAINER" | "") {
                return Err(p.err(line, format!("ONBUILD cannot trigger `{w}`")));
            }
            Instruction::Onbuild(rest.trim().to_string())
        }
        other => {
            let known = [
                "FROM",
                "RUN",
                "COPY",
                "ADD",
                "ENV",
                "ARG",
                "WORKDIR",
                "USER",
                "LABEL",
                "EXPOSE",
                "VOLUME",
                "CMD",
                "ENTRYPOINT",
                "HEALTHCHECK",
                "SHELL",
                "STOPSIGNAL",
                "ONBUILD",
            ];
            let hint = known
                .iter()
                .map(|k| (strsim::levenshtein(k, other), k))
                .filter(|(d, _)| *d <= 2)
                .min()
                .map(|(_, k)| format!(" (did you mean {k}?)"))
                .unwrap_or_default();
            return Err(p.err(line, format!("unknown instruction `{other}`{hint}")));
        }
    })
}

/// Expands `$VAR`, `${VAR}`, `${VAR:-default}` and `${VAR:+alternative}` (and their forms
/// without the colon) from `vars`; `\$` (with the file's escape) is a literal `$`. Unknown
/// variables expand to nothing, as Docker's.
pub fn expand(s: &str, vars: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(s.len());
    let b: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == '\\' && b.get(i + 1) == Some(&'$') {
            out.push('$');
            i += 2;
            continue;
        }
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        if b.get(i + 1) == Some(&'{') {
            // The matching brace: a default may hold `${...}` of its own.
            let mut depth = 0usize;
            let close = b[i + 2..].iter().position(|&c| {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => return true,
                    '}' => depth -= 1,
                    _ => {}
                }
                false
            });
            let Some(close) = close else {
                out.extend(&b[i..]);
                break;
            };
            let inner: String = b[i + 2..i + 2 + close].iter().collect();
            i += close + 3;
            let (name, op, word) = match inner.find([':', '-', '+']) {
                Some(k) => {
                    let (n, r) = inner.split_at(k);
                    let (op, w) = if let Some(r) = r.strip_prefix(":-") {
                        (":-", r)
                    } else if let Some(r) = r.strip_prefix(":+") {
                        (":+", r)
                    } else if let Some(r) = r.strip_prefix('-') {
                        ("-", r)
                    } else if let Some(r) = r.strip_prefix('+') {
                        ("+", r)
                    } else {
                        ("", "")
                    };
                    (n.to_string(), op, w.to_string())
                }
                None => (inner.clone(), "", String::new()),
            };
            let v = vars(&name);
            let word = expand(&word, vars);
            out.push_str(&match op {
                ":-" => v.filter(|v| !v.is_empty()).unwrap_or(word),
                "-" => v.unwrap_or(word),
                ":+" => v
                    .filter(|v| !v.is_empty())
                    .map(|_| word)
                    .unwrap_or_default(),
                "+" => v.map(|_| word).unwrap_or_default(),
                _ => v.unwrap_or_default(),
            });
            continue;
        }
        let len = b[i + 1..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
            .count();
        if len == 0 {
            out.push('$');
            i += 1;
            continue;
        }
        let name: String = b[i + 1..i + 1 + len].iter().collect();
        out.push_str(&vars(&name).unwrap_or_default());
        i += 1 + len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Dockerfile {
        parse("Dockerfile", text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn err(text: &str) -> String {
        parse("Dockerfile", text).unwrap_err().to_string()
    }

    #[test]
    fn multi_stage_with_every_common_instruction() {
        let df = ok(r#"# syntax=docker/dockerfile:1
ARG BASE=busybox
FROM ${BASE} AS builder
WORKDIR /src
RUN echo hello > /src/out.txt && \
    echo more >> /src/out.txt
FROM busybox
LABEL org.example.a="one two" b=2
ENV PATH=/usr/bin:/bin APP="x y"
COPY --from=builder --chown=1000:1000 --chmod=0755 /src/out.txt /app/
USER 1000:1000
WORKDIR /app
EXPOSE 8080/tcp 9090
VOLUME ["/data"]
HEALTHCHECK --interval=5s --retries=3 CMD test -f /app/out.txt
STOPSIGNAL SIGINT
SHELL ["/bin/sh", "-ec"]
ONBUILD RUN echo child
ENTRYPOINT ["/bin/cat"]
CMD ["/app/out.txt"]
"#);
        assert_eq!(df.syntax.as_deref(), Some("docker/dockerfile:1"));
        assert_eq!(df.global_args, [("BASE".into(), Some("busybox".into()))]);
        assert_eq!(df.stages.len(), 2);
        assert_eq!(df.stages[0].name.as_deref(), Some("builder"));
        assert_eq!(df.stages[0].base, "${BASE}");
        let run = &df.stages[0].steps[1];
        assert_eq!(run.line, 5);
        assert_eq!(
            run.instruction,
            Instruction::Run {
                command: Command::Shell(
                    "echo hello > /src/out.txt &&     echo more >> /src/out.txt".into()
                ),
                network: None,
                mounts: vec![],
                heredocs: vec![],
            }
        );
        let s = &df.stages[1].steps;
        assert_eq!(
            s[0].instruction,
            Instruction::Label(vec![
                ("org.example.a".into(), "one two".into()),
                ("b".into(), "2".into())
            ])
        );
        assert_eq!(
            s[1].instruction,
            Instruction::Env(vec![
                ("PATH".into(), "/usr/bin:/bin".into()),
                ("APP".into(), "x y".into())
            ])
        );
        match &s[2].instruction {
            Instruction::Copy(c) => {
                assert_eq!(c.from.as_deref(), Some("builder"));
                assert_eq!(c.chown.as_deref(), Some("1000:1000"));
                assert_eq!(c.chmod.as_deref(), Some("0755"));
                assert_eq!(
                    (c.sources.as_slice(), c.dest.as_str()),
                    (&["/src/out.txt".to_string()][..], "/app/")
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s[5].instruction,
            Instruction::Expose(vec!["8080/tcp".into(), "9090".into()])
        );
        assert_eq!(s[6].instruction, Instruction::Volume(vec!["/data".into()]));
        match &s[7].instruction {
            Instruction::Healthcheck(Some(h)) => {
                assert_eq!(h.interval.as_deref(), Some("5s"));
                assert_eq!(h.cmd, Command::Shell("test -f /app/out.txt".into()));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s[9].instruction,
            Instruction::Shell(vec!["/bin/sh".into(), "-ec".into()])
        );
        assert_eq!(
            s[10].instruction,
            Instruction::Onbuild("RUN echo child".into())
        );
        assert_eq!(
            s[11].instruction,
            Instruction::Entrypoint(Command::Exec(vec!["/bin/cat".into()]))
        );
        assert_eq!(df.target(Some("builder")), Some(0));
        assert_eq!(df.target(None), Some(1));
        assert_eq!(df.target(Some("nope")), None);
    }

    #[test]
    fn heredocs_and_continuations_keep_their_lines() {
        let df = ok(
            "FROM busybox\n\n# a comment\nRUN <<EOF\necho one\necho two\nEOF\nCOPY <<-\"END\" /etc/motd\n\thello $USER\n\tEND\nRUN a \\\n# dropped comment\n  b\n",
        );
        let s = &df.stages[0].steps;
        assert_eq!(s[0].line, 4);
        match &s[0].instruction {
            Instruction::Run { heredocs, .. } => {
                assert_eq!(heredocs[0].body, "echo one\necho two\n");
                assert!(heredocs[0].expand);
            }
            other => panic!("{other:?}"),
        }
        match &s[1].instruction {
            Instruction::Copy(c) => {
                assert_eq!(c.dest, "/etc/motd");
                assert_eq!(c.heredocs[0].body, "hello $USER\n");
                assert!(!c.heredocs[0].expand, "a quoted delimiter does not expand");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s[2].line, 11);
        assert_eq!(
            s[2].instruction,
            Instruction::Run {
                command: Command::Shell("a   b".into()),
                network: None,
                mounts: vec![],
                heredocs: vec![]
            }
        );
        assert!(
            err("FROM busybox\nRUN <<EOF\necho\n")
                .contains("Dockerfile:2: the heredoc `<<EOF` is never closed")
        );
    }

    #[test]
    fn run_mounts_parse_as_buildkit_writes_them() {
        let df = ok(
            "FROM busybox\nRUN --mount=type=cache,target=/root/.cache,id=pip,sharing=locked --mount=type=bind,source=src,target=/src --network=none make\n",
        );
        match &df.stages[0].steps[0].instruction {
            Instruction::Run {
                mounts,
                network,
                command,
                ..
            } => {
                assert_eq!(network.as_deref(), Some("none"));
                assert_eq!(command, &Command::Shell("make".into()));
                assert_eq!(mounts.len(), 2);
                assert_eq!(mounts[0].kind, MountKind::Cache);
                assert!(mounts[0].read_write, "a cache is writable");
                assert_eq!(mounts[0].id.as_deref(), Some("pip"));
                assert_eq!(mounts[1].kind, MountKind::Bind);
                assert!(!mounts[1].read_write, "a bind is read-only unless rw");
                assert_eq!(mounts[1].source.as_deref(), Some("src"));
            }
            other => panic!("{other:?}"),
        }
        let ro = parse_mount("type=cache,target=/c,ro").unwrap();
        assert!(!ro.read_write);
        let from = parse_mount("type=bind,from=builder,source=/out,target=/o").unwrap();
        assert!(
            !from.read_write,
            "`from` has an r and an o in it, and is not `ro`"
        );
    }

    #[test]
    fn the_escape_directive_changes_the_continuation() {
        let df = ok("# escape=`\nFROM busybox\nRUN echo a `\n  b\nCOPY c:\\x d\n");
        let s = &df.stages[0].steps;
        assert_eq!(
            s[0].instruction,
            Instruction::Run {
                command: Command::Shell("echo a   b".into()),
                network: None,
                mounts: vec![],
                heredocs: vec![]
            }
        );
        assert_eq!(s[1].line, 5);
    }

    #[test]
    fn errors_name_the_line_and_what_was_wrong() {
        assert_eq!(
            err("FROM busybox\nRUN true\nCOPPY a b\n"),
            "Dockerfile:3: unknown instruction `COPPY` (did you mean COPY?)"
        );
        assert_eq!(
            err("RUN true\nFROM busybox\n"),
            "Dockerfile:1: RUN before the first FROM: only ARG may come before FROM"
        );
        assert!(err("").contains("no FROM instruction"));
        assert!(
            err("FROM busybox\nCOPY onlyone\n")
                .starts_with("Dockerfile:2: COPY needs at least one source")
        );
        assert!(
            err("FROM busybox\nCOPY --form=x a b\n")
                .contains("unknown flag --form (it takes --from")
        );
        assert!(
            err("FROM busybox\nRUN --mount=type=volume,target=/x true\n")
                .contains("expected bind, cache, tmpfs, secret or ssh")
        );
        assert!(err("FROM busybox\nRUN --mount=type=cache true\n").contains("needs target=PATH"));
        assert!(
            err("FROM busybox\nRUN --security=insecure true\n").contains("unknown flag --security")
        );
        assert!(err("FROM busybox\nSHELL /bin/bash -c\n").contains("SHELL takes the JSON form"));
        assert!(err("FROM a b c d\n").contains("FROM: expected `FROM IMAGE [AS NAME]`"));
        assert!(err("FROM busybox\nENV A=\"x\n").contains("Dockerfile:2: unterminated quote"));
        assert!(
            err("FROM busybox\nHEALTHCHECK --interval=1s true\n").contains("HEALTHCHECK: expected")
        );
        assert!(err("FROM busybox\nONBUILD FROM x\n").contains("ONBUILD cannot trigger"));
    }

    #[test]
    fn legacy_forms_and_exec_form() {
        let df = ok(
            "from busybox as Base\nenv A hello world\nMAINTAINER me\nCMD [\"sh\", \"-c\", \"echo hi\"]\nCMD not [json\n",
        );
        let s = &df.stages[0].steps;
        assert_eq!(df.stages[0].name.as_deref(), Some("Base"));
        assert_eq!(
            s[0].instruction,
            Instruction::Env(vec![("A".into(), "hello world".into())])
        );
        assert_eq!(
            s[1].instruction,
            Instruction::Label(vec![("maintainer".into(), "me".into())])
        );
        assert_eq!(
            s[2].instruction,
            Instruction::Cmd(Command::Exec(vec![
                "sh".into(),
                "-c".into(),
                "echo hi".into()
            ]))
        );
        assert_eq!(
            s[3].instruction,
            Instruction::Cmd(Command::Shell("not [json".into()))
        );
    }

    #[test]
    fn expansion_follows_docker() {
        let vars = |k: &str| match k {
            "A" => Some("x".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        assert_eq!(expand("$A/${A}/$NONE/end", &vars), "x/x//end");
        assert_eq!(
            expand(
                "${NONE:-d} ${EMPTY:-d} ${EMPTY-d} ${A:+alt} ${NONE:+alt}",
                &vars
            ),
            "d d  alt "
        );
        assert_eq!(expand("\\$A costs $5 and $", &vars), "$A costs  and $");
        assert_eq!(expand("${NONE:-${A}}", &vars), "x");
    }
}
