//! Finding, reading and combining the project file(s): default names, `-f`, `COMPOSE_FILE`,
//! `.env` and `--env-file`, interpolation, relative paths, `extends`, `include`, and merging.
//!
//! Everything the loader reads comes through `LoadOptions` (files, environment, working
//! directory), so the whole of it runs in tests without touching the process environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::LoadError;
use super::diag::{Diagnostic, Diagnostics, Pos, join_path};
use super::interpolate::{Vars, interpolate_tree, parse_dotenv};
use super::merge::{merge_project, merge_service, untag};
use super::node::{Key, Kind, Node};

/// The file names berth looks for, in order, when no `-f` is given.
pub const DEFAULT_FILES: [&str; 5] = [
    "berth.yaml",
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

/// What the loader is asked to load. Mirrors the global command-line options.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `-f` files, in order (later files merge over earlier ones).
    pub files: Vec<PathBuf>,
    /// `-p`.
    pub project_name: Option<String>,
    /// `--project-directory`.
    pub project_directory: Option<PathBuf>,
    /// `--env-file` (replaces the default `.env`).
    pub env_files: Vec<PathBuf>,
    /// `--profile`.
    pub profiles: Vec<String>,
    /// The shell's environment. It wins over `.env` and `--env-file`.
    pub environ: BTreeMap<String, String>,
    /// The working directory relative paths on the command line start from.
    pub cwd: PathBuf,
    /// `--no-interpolate`.
    pub no_interpolate: bool,
    /// Leave out the JSON Schema check (the typed decode and the cross-reference checks still
    /// run). For the long-lived supervisor, which has the file checked in a short-lived process
    /// first: the compiled schema is most of the memory a load costs, and would stay.
    pub skip_schema: bool,
    /// The services whose `env_file`s the command needs (with what they depend on): None for
    /// all of them. The others' files are read if they are there and not required otherwise,
    /// as Compose loads lazily: a missing env file of one service does not stop `up`,
    /// `logs` or `exec` of another.
    pub env_for: Option<Vec<String>>,
}

impl LoadOptions {
    /// Options for the current process (its environment and working directory).
    pub fn from_process() -> LoadOptions {
        LoadOptions {
            environ: std::env::vars().collect(),
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            ..LoadOptions::default()
        }
    }
}

/// The combined, merged tree of all files, before schema validation and normalization.
pub struct Raw {
    pub root: Node,
    pub project_dir: PathBuf,
    pub files: Vec<PathBuf>,
    pub vars: Vars,
    /// The working directory (paths in messages are shown relative to it).
    pub cwd: PathBuf,
    pub name: String,
    pub profiles: Vec<String>,
    pub warnings: Vec<String>,
    /// `LoadOptions::env_for`.
    pub env_for: Option<Vec<String>>,
}

struct Ctx<'a> {
    opts: &'a LoadOptions,
    diags: Diagnostics,
    warnings: Vec<String>,
    /// Files being loaded through include/extends, to stop cycles.
    stack: Vec<PathBuf>,
    /// `-f -`: the file is read from standard input (once; its path is `<cwd>/-`).
    stdin: Option<(PathBuf, Option<String>)>,
}

fn abs(base: &Path, p: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    clean(&joined)
}

/// Lexically removes `.` and `..` (no symlink resolution: the path may not exist yet).
pub fn clean(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// A path as shown to the user: relative to the working directory when it is below it.
pub fn shown(p: &Path, cwd: &Path) -> String {
    p.strip_prefix(cwd)
        .map(|r| r.to_string_lossy().into_owned())
        .unwrap_or_else(|_| p.to_string_lossy().into_owned())
}

fn display_name(p: &Path, cwd: &Path) -> Arc<str> {
    let shown = p
        .strip_prefix(cwd)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| p.to_path_buf());
    Arc::from(shown.to_string_lossy().as_ref())
}

/// Reads `.env`-style files into variables (later files win), interpolating from `shell`.
fn read_env_files(
    files: &[PathBuf],
    shell: &BTreeMap<String, String>,
    required: bool,
    cwd: &Path,
    diags: &mut Diagnostics,
) -> Vars {
    let mut vars = Vars::new();
    for f in files {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                diags.push(Diagnostic::new(
                    Pos::nowhere(&shown(f, cwd)),
                    "",
                    if e.kind() == std::io::ErrorKind::NotFound {
                        "env file does not exist".to_string()
                    } else {
                        format!("cannot read env file: {e}")
                    },
                ));
                continue;
            }
        };
        let lookup = |k: &str| shell.get(k).cloned().or_else(|| vars.get(k).cloned());
        match parse_dotenv(&text, false, &lookup) {
            Ok(pairs) => {
                for (k, v) in pairs {
                    if let Some(v) = v {
                        vars.insert(k, v);
                    }
                }
            }
            Err(e) => diags.push(Diagnostic::new(
                Pos::new(&display_name(f, cwd), e.line, 1),
                "",
                e.message,
            )),
        }
    }
    vars
}

fn env_for(dir: &Path, env_files: &[PathBuf], opts: &LoadOptions, diags: &mut Diagnostics) -> Vars {
    let mut vars = if env_files.is_empty() {
        read_env_files(&[dir.join(".env")], &opts.environ, false, &opts.cwd, diags)
    } else {
        read_env_files(env_files, &opts.environ, true, &opts.cwd, diags)
    };
    for (k, v) in &opts.environ {
        vars.insert(k.clone(), v.clone());
    }
    vars
}

/// Refuses a project file over the size berth reads (`len`: its size, or for standard input
/// what was read of it, which stops one byte past the bound).
fn too_big(name: &Arc<str>, len: u64) -> Result<(), LoadError> {
    if len <= super::node::MAX_FILE_BYTES as u64 {
        return Ok(());
    }
    Err(LoadError::Invalid(Diagnostics(vec![Diagnostic::new(
        Pos::new(name, 1, 1),
        "",
        format!(
            "file is {len} bytes; berth reads project files of at most {} bytes",
            super::node::MAX_FILE_BYTES
        ),
    )])))
}

/// Gives `VAR` (a list item without `=`, or a mapping key with no value) the value `vars`
/// has for it; leaves the others alone.
fn fill_pass_through(env: &mut Node, vars: &Vars) {
    match &mut env.kind {
        Kind::Seq(items) => {
            for it in items {
                if let Kind::Str(t) = &mut it.kind
                    && !t.contains('=')
                    && let Some(v) = vars.get(t.as_str())
                {
                    *t = format!("{t}={v}");
                }
            }
        }
        Kind::Map(m) => {
            for (k, v) in m.iter_mut() {
                if matches!(v.kind, Kind::Null)
                    && let Some(val) = vars.get(&k.name)
                {
                    v.kind = Kind::Str(val.clone());
                }
            }
        }
        _ => {}
    }
}

/// The project name the files declare (`name:` at the top of the last file that has one),
/// read ahead of the files' load so that they can use it as `${COMPOSE_PROJECT_NAME}`.
fn declared_name(files: &[PathBuf], vars: &Vars, stdin: Option<&PathBuf>) -> Option<String> {
    let mut name = None;
    for f in files.iter().filter(|f| Some(*f) != stdin) {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("name:") {
                let v = v.split(" #").next().unwrap_or_default().trim();
                let v = v.trim_matches(|c| c == '"' || c == '\'');
                let v = if v.contains('$') {
                    super::interpolate::interpolate(v, vars).ok()?
                } else {
                    v.to_string()
                };
                if !v.is_empty() {
                    name = Some(v);
                }
            }
        }
    }
    name
}

/// Turns a directory name into a valid project name (lowercase letters, digits, `-`, `_`).
pub fn normalize_project_name(s: &str) -> String {
    let n: String = s
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_')
        .collect();
    n.trim_start_matches(['-', '_']).to_string()
}

pub fn valid_project_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Finds the default project file in `dir` or its parents, with its override file.
fn discover(dir: &Path) -> Option<Vec<PathBuf>> {
    let mut cur = Some(dir);
    while let Some(d) = cur {
        for name in DEFAULT_FILES {
            let p = d.join(name);
            if p.is_file() {
                let mut files = vec![p];
                let (stem, ext) = name.rsplit_once('.').unwrap_or((name, "yaml"));
                let ov = d.join(format!("{stem}.override.{ext}"));
                if ov.is_file() {
                    files.push(ov);
                }
                return Some(files);
            }
        }
        cur = d.parent();
    }
    None
}

pub fn load_raw(opts: &LoadOptions) -> Result<Raw, LoadError> {
    let mut ctx = Ctx {
        opts,
        diags: Diagnostics::default(),
        warnings: Vec::new(),
        stack: Vec::new(),
        stdin: opts
            .files
            .iter()
            .any(|f| f == Path::new("-"))
            .then(|| (abs(&opts.cwd, Path::new("-")), None)),
    };
    let cwd = &opts.cwd;
    // --env-file, in order (the later wins), else COMPOSE_ENV_FILES (comma-separated).
    let env_files: Vec<PathBuf> = if opts.env_files.is_empty() {
        opts.environ
            .get("COMPOSE_ENV_FILES")
            .map(|l| {
                l.split(',')
                    .map(str::trim)
                    .filter(|f| !f.is_empty())
                    .map(|f| abs(cwd, Path::new(f)))
                    .collect()
            })
            .unwrap_or_default()
    } else {
        opts.env_files.iter().map(|p| abs(cwd, p)).collect()
    };
    let pre_dir = match (&opts.project_directory, opts.files.first()) {
        (Some(d), _) => abs(cwd, d),
        (None, Some(f)) => abs(cwd, f)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| cwd.clone()),
        (None, None) => cwd.clone(),
    };
    let mut vars = env_for(&pre_dir, &env_files, opts, &mut ctx.diags);

    let files: Vec<PathBuf> = if !opts.files.is_empty() {
        opts.files.iter().map(|f| abs(cwd, f)).collect()
    } else if let Some(cf) = vars.get("COMPOSE_FILE").filter(|s| !s.is_empty()) {
        let sep = vars
            .get("COMPOSE_PATH_SEPARATOR")
            .cloned()
            .unwrap_or_else(|| ":".into());
        cf.split(sep.as_str())
            .filter(|s| !s.is_empty())
            .map(|f| abs(&pre_dir, Path::new(f)))
            .collect()
    } else {
        discover(&pre_dir).ok_or_else(|| LoadError::NoProjectFile {
            dir: pre_dir.clone(),
        })?
    };
    let project_dir = match &opts.project_directory {
        Some(d) => abs(cwd, d),
        None => files[0]
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| cwd.clone()),
    };
    if project_dir != pre_dir && env_files.is_empty() {
        vars = env_for(&project_dir, &env_files, opts, &mut ctx.diags);
    }
    // COMPOSE_PROJECT_NAME is there for the files to use, as in Compose: -p, else the
    // environment's, else the files' `name:`, else the directory's (checked below).
    // What the environment (or a .env) said, for the name's own precedence below.
    let env_name = vars.get("COMPOSE_PROJECT_NAME").cloned();
    if env_name.is_none() || opts.project_name.is_some() {
        let name = opts
            .project_name
            .clone()
            .or_else(|| declared_name(&files, &vars, ctx.stdin.as_ref().map(|(p, _)| p)))
            .unwrap_or_else(|| {
                normalize_project_name(
                    &project_dir
                        .file_name()
                        .map(|s| s.to_string_lossy().to_string())
                        .unwrap_or_default(),
                )
            });
        vars.insert("COMPOSE_PROJECT_NAME".into(), name);
    }

    let mut merged: Option<Node> = None;
    for (i, f) in files.iter().enumerate() {
        // An empty override file adds nothing, as in Compose; an empty first file is an error.
        let Some(root) = ctx.load_file(f, &vars, &project_dir, i > 0)? else {
            continue;
        };
        merged = Some(match merged {
            None => untag(root),
            Some(base) => merge_project(base, root),
        });
    }
    let first = display_name(&files[0], cwd);
    let mut root =
        merged.unwrap_or_else(|| Node::new(Kind::Map(Vec::new()), Pos::new(&first, 1, 1)));

    if let Some(v) = root.get("version") {
        ctx.warnings.push(format!(
            "{}: the top-level `version` is obsolete and ignored",
            v.pos
        ));
    }

    // The project name: -p, then COMPOSE_PROJECT_NAME, then `name:`, then the directory.
    let from_file = root.get("name").and_then(Node::as_str).map(str::to_string);
    let name = if let Some(n) = &opts.project_name {
        if !valid_project_name(n) {
            return Err(LoadError::BadProjectName(n.clone()));
        }
        n.clone()
    } else if let Some(n) = env_name.as_ref().filter(|s| !s.is_empty()) {
        if !valid_project_name(n) {
            return Err(LoadError::BadProjectName(n.clone()));
        }
        n.clone()
    } else if let Some(n) = from_file {
        if !valid_project_name(&n) {
            let pos = root
                .get("name")
                .map(|v| v.pos.clone())
                .unwrap_or_else(|| Pos::nowhere(""));
            ctx.diags.push(Diagnostic::new(
                pos,
                "name",
                format!("expected a project name of lowercase letters, digits, `-` and `_`, starting with a letter or digit, found `{n}`"),
            ));
        }
        n
    } else {
        normalize_project_name(
            &project_dir
                .file_name()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default(),
        )
    };
    // The resolved name is written back so `config` shows it and a reload keeps it.
    root.set(
        "name",
        Node::str(name.clone(), Pos::nowhere("(project name)")),
    );

    let mut profiles = opts.profiles.clone();
    if profiles.is_empty()
        && let Some(p) = vars.get("COMPOSE_PROFILES")
    {
        profiles = p
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
    }

    if !ctx.diags.is_empty() {
        return Err(LoadError::Invalid(ctx.diags.finish()));
    }
    Ok(Raw {
        root,
        project_dir,
        files,
        vars,
        cwd: opts.cwd.clone(),
        name,
        profiles,
        warnings: ctx.warnings,
        env_for: opts.env_for.clone(),
    })
}

impl Ctx<'_> {
    /// Reads, parses, interpolates and resolves one file: its relative paths, `extends` and
    /// `include`. Returns None for an empty file. Fatal problems (unreadable file, YAML syntax)
    /// end the load; the rest are collected.
    fn load_file(
        &mut self,
        path: &Path,
        vars: &Vars,
        base_dir: &Path,
        empty_ok: bool,
    ) -> Result<Option<Node>, LoadError> {
        if self.stack.iter().any(|p| p == path) {
            let chain: Vec<String> = self
                .stack
                .iter()
                .chain(std::iter::once(&path.to_path_buf()))
                .map(|p| p.display().to_string())
                .collect();
            return Err(LoadError::Invalid(Diagnostics(vec![Diagnostic::new(
                Pos::nowhere(&path.to_string_lossy()),
                "",
                format!(
                    "files include each other in a cycle: {}",
                    chain.join(" -> ")
                ),
            )])));
        }
        let mut root = match self.parse_file(path, empty_ok)? {
            Some(r) => r,
            None => return Ok(None),
        };
        berth_extensions(&mut root, &mut self.diags);
        if !self.opts.no_interpolate {
            let mut errs = Vec::new();
            interpolate_tree(&mut root, vars, "", &mut errs);
            for e in errs {
                self.diags.push(e);
            }
        }
        let home = vars.get("HOME").cloned();
        resolve_paths(&mut root, base_dir, home.as_deref());
        self.stack.push(path.to_path_buf());
        self.resolve_extends(&mut root, path, vars, base_dir)?;
        self.resolve_include(&mut root, base_dir)?;
        self.stack.pop();
        Ok(Some(root))
    }

    fn parse_file(&mut self, path: &Path, empty_ok: bool) -> Result<Option<Node>, LoadError> {
        let name = display_name(path, &self.opts.cwd);
        if let Some((p, text)) = &mut self.stdin
            && p == path
        {
            if text.is_none() {
                let mut t = String::new();
                std::io::Read::read_to_string(
                    &mut std::io::Read::take(
                        std::io::stdin(),
                        super::node::MAX_FILE_BYTES as u64 + 1,
                    ),
                    &mut t,
                )
                .map_err(|e| LoadError::Read {
                    path: path.to_path_buf(),
                    source: e,
                })?;
                *text = Some(t);
            }
            let text = text.clone().unwrap_or_default();
            too_big(&name, text.len() as u64)?;
            return self.parse_text(&name, &text, empty_ok);
        }
        let meta = std::fs::metadata(path).map_err(|e| LoadError::Read {
            path: path.to_path_buf(),
            source: e,
        })?;
        // Checked before it is read: a huge file is refused without reading it.
        too_big(&name, meta.len())?;
        let text = std::fs::read_to_string(path).map_err(|e| LoadError::Read {
            path: path.to_path_buf(),
            source: e,
        })?;
        self.parse_text(&name, &text, empty_ok)
    }

    /// Parses one file's text.
    fn parse_text(
        &mut self,
        name: &Arc<str>,
        text: &str,
        empty_ok: bool,
    ) -> Result<Option<Node>, LoadError> {
        let name = name.clone();
        let root = super::node::parse(&name, text)
            .map_err(|d| LoadError::Invalid(Diagnostics(vec![d])))?;
        let Some(root) = root else {
            if empty_ok {
                return Ok(None);
            }
            return Err(LoadError::Invalid(Diagnostics(vec![Diagnostic::new(
                Pos::new(&name, 1, 1),
                "",
                "the file is empty: expected a mapping with `services:`",
            )])));
        };
        if root.as_map().is_none() {
            return Err(LoadError::Invalid(Diagnostics(vec![Diagnostic::new(
                root.pos.clone(),
                "",
                format!(
                    "expected a mapping at the top of the file (`services:`, `networks:` ...), found {}",
                    root.type_name()
                ),
            )])));
        }
        Ok(Some(root))
    }

    /// Replaces each service's `extends` with the merged result of its base service.
    fn resolve_extends(
        &mut self,
        root: &mut Node,
        path: &Path,
        vars: &Vars,
        base_dir: &Path,
    ) -> Result<(), LoadError> {
        let Some(services) = root.get("services").and_then(Node::as_map) else {
            return Ok(());
        };
        let names: Vec<String> = services
            .iter()
            .filter(|(_, v)| v.get("extends").is_some())
            .map(|(k, _)| k.name.clone())
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        let snapshot = root.clone();
        for name in names {
            let mut chain = vec![(path.to_path_buf(), name.clone())];
            if let Some(resolved) =
                self.extend_one(&snapshot, path, &name, vars, base_dir, &mut chain)?
                && let Some(slot) = root.get_mut("services").and_then(|s| s.get_mut(&name))
            {
                *slot = resolved;
            }
        }
        Ok(())
    }

    fn extend_one(
        &mut self,
        file_root: &Node,
        file_path: &Path,
        name: &str,
        vars: &Vars,
        base_dir: &Path,
        chain: &mut Vec<(PathBuf, String)>,
    ) -> Result<Option<Node>, LoadError> {
        let Some(svc) = file_root.get("services").and_then(|s| s.get(name)) else {
            return Ok(None);
        };
        let mut svc = svc.clone();
        let Some(ext) = svc.remove("extends") else {
            return Ok(Some(svc));
        };
        let spath = format!("services.{name}.extends");
        let (base_name, base_file, name_pos) = match &ext.kind {
            Kind::Str(s) => (s.clone(), None, ext.pos.clone()),
            Kind::Map(_) => {
                let Some(n) = ext.get("service").and_then(Node::as_str) else {
                    self.diags.push(Diagnostic::new(
                        ext.pos.clone(),
                        spath,
                        "expected `service:` naming the service to extend",
                    ));
                    return Ok(Some(svc));
                };
                let pos = ext
                    .get("service")
                    .map(|n| n.pos.clone())
                    .unwrap_or(ext.pos.clone());
                let file = ext.get("file").and_then(Node::as_str).map(PathBuf::from);
                (n.to_string(), file, pos)
            }
            _ => {
                self.diags.push(Diagnostic::new(
                    ext.pos.clone(),
                    spath,
                    format!(
                        "expected a service name or a mapping with `service:` and `file:`, found {}",
                        ext.type_name()
                    ),
                ));
                return Ok(Some(svc));
            }
        };
        // Load the other file if there is one (paths in it resolve relative to its directory).
        let other;
        let (root_ref, path_ref, dir_ref): (&Node, PathBuf, PathBuf) = match &base_file {
            None => (file_root, file_path.to_path_buf(), base_dir.to_path_buf()),
            Some(f) => {
                let fp = abs(base_dir, f);
                if !fp.is_file() {
                    let pos = ext
                        .get("file")
                        .map(|n| n.pos.clone())
                        .unwrap_or(ext.pos.clone());
                    self.diags.push(Diagnostic::new(
                        pos,
                        format!("{spath}.file"),
                        format!(
                            "the file to extend does not exist: {}",
                            shown(&fp, &self.opts.cwd)
                        ),
                    ));
                    return Ok(Some(svc));
                }
                let dir = fp.parent().map(Path::to_path_buf).unwrap_or_default();
                let mut r = match self.parse_file(&fp, false)? {
                    Some(r) => r,
                    None => return Ok(Some(svc)),
                };
                if !self.opts.no_interpolate {
                    let mut errs = Vec::new();
                    interpolate_tree(&mut r, vars, "", &mut errs);
                    self.diags.0.extend(errs);
                }
                resolve_paths(&mut r, &dir, vars.get("HOME").map(String::as_str));
                other = r;
                (&other, fp, dir)
            }
        };
        if chain.iter().any(|(p, n)| p == &path_ref && n == &base_name) {
            let mut names: Vec<String> = chain.iter().map(|(_, n)| n.clone()).collect();
            names.push(base_name.clone());
            self.diags.push(Diagnostic::new(
                name_pos,
                spath,
                format!("`extends` forms a cycle: {}", names.join(" -> ")),
            ));
            return Ok(Some(svc));
        }
        if root_ref
            .get("services")
            .and_then(|s| s.get(&base_name))
            .is_none()
        {
            let known: Vec<String> = root_ref
                .get("services")
                .and_then(Node::as_map)
                .map(|m| m.iter().map(|(k, _)| k.name.clone()).collect())
                .unwrap_or_default();
            let hint = super::validate::did_you_mean(&base_name, known.iter().map(String::as_str));
            self.diags.push(Diagnostic::new(
                name_pos,
                format!("{spath}.service"),
                format!(
                    "extends an undefined service `{base_name}`{}{hint}",
                    match &base_file {
                        Some(f) => format!(" (in {})", f.display()),
                        None => String::new(),
                    }
                ),
            ));
            return Ok(Some(svc));
        }
        chain.push((path_ref.clone(), base_name.clone()));
        let base = self.extend_one(root_ref, &path_ref, &base_name, vars, &dir_ref, chain)?;
        chain.pop();
        Ok(Some(match base {
            Some(b) => merge_service(b, svc),
            None => svc,
        }))
    }

    /// Loads each `include:` entry as a project of its own and adds its resources.
    fn resolve_include(&mut self, root: &mut Node, base_dir: &Path) -> Result<(), LoadError> {
        let Some(inc) = root.remove("include") else {
            return Ok(());
        };
        let Some(items) = inc.as_seq() else {
            self.diags.push(Diagnostic::new(
                inc.pos.clone(),
                "include",
                format!(
                    "expected a list of files to include, found {}",
                    inc.type_name()
                ),
            ));
            return Ok(());
        };
        for (i, item) in items.iter().enumerate() {
            let ipath = format!("include[{i}]");
            let (paths, pdir, envf): (Vec<(String, Pos)>, Option<String>, Vec<String>) = match &item
                .kind
            {
                Kind::Str(s) => (vec![(s.clone(), item.pos.clone())], None, Vec::new()),
                Kind::Map(_) => {
                    let paths = match item.get("path") {
                        Some(p) => match &p.kind {
                            Kind::Str(s) => vec![(s.clone(), p.pos.clone())],
                            Kind::Seq(v) => v
                                .iter()
                                .filter_map(|x| x.as_str().map(|s| (s.to_string(), x.pos.clone())))
                                .collect(),
                            _ => Vec::new(),
                        },
                        None => Vec::new(),
                    };
                    let pdir = item
                        .get("project_directory")
                        .and_then(Node::as_str)
                        .map(str::to_string);
                    let envf = match item.get("env_file") {
                        Some(e) => match &e.kind {
                            Kind::Str(s) => vec![s.clone()],
                            Kind::Seq(v) => v
                                .iter()
                                .filter_map(|x| x.as_str().map(str::to_string))
                                .collect(),
                            _ => Vec::new(),
                        },
                        None => Vec::new(),
                    };
                    (paths, pdir, envf)
                }
                _ => (Vec::new(), None, Vec::new()),
            };
            if paths.is_empty() {
                self.diags.push(Diagnostic::new(
                    item.pos.clone(),
                    ipath,
                    "expected a path (or a mapping with `path:`) of a file to include",
                ));
                continue;
            }
            let first = abs(base_dir, Path::new(&paths[0].0));
            let inc_dir = match &pdir {
                Some(d) => abs(base_dir, Path::new(d)),
                None => first.parent().map(Path::to_path_buf).unwrap_or_default(),
            };
            let env_files: Vec<PathBuf> =
                envf.iter().map(|e| abs(base_dir, Path::new(e))).collect();
            let mut diags = Diagnostics::default();
            let vars = env_for(&inc_dir, &env_files, self.opts, &mut diags);
            self.diags.0.extend(diags.0);
            let mut merged: Option<Node> = None;
            for (p, pos) in &paths {
                let fp = abs(base_dir, Path::new(p));
                if !fp.is_file() {
                    self.diags.push(Diagnostic::new(
                        pos.clone(),
                        ipath.clone(),
                        format!(
                            "the included file does not exist: {}",
                            shown(&fp, &self.opts.cwd)
                        ),
                    ));
                    continue;
                }
                if let Some(r) = self.load_file(&fp, &vars, &inc_dir, false)? {
                    merged = Some(match merged {
                        None => untag(r),
                        Some(b) => merge_project(b, r),
                    });
                }
            }
            let Some(mut sub) = merged else { continue };
            // A service's pass-through variables (`environment: [VAR]`) take their values from
            // what the include reads (its env_file, then the shell), as compose-go does.
            if let Some(services) = sub.get_mut("services").and_then(Node::as_map_mut) {
                for (_, svc) in services.iter_mut() {
                    if let Some(env) = svc.get_mut("environment") {
                        fill_pass_through(env, &vars);
                    }
                }
            }
            for section in [
                "services", "networks", "volumes", "secrets", "configs", "disks",
            ] {
                let Some(src) = sub.get(section).and_then(Node::as_map) else {
                    continue;
                };
                if root.get(section).is_none() {
                    root.set(section, Node::new(Kind::Map(Vec::new()), item.pos.clone()));
                }
                let Some(dst) = root.get_mut(section).and_then(Node::as_map_mut) else {
                    continue;
                };
                for (k, v) in src {
                    if let Some((ek, ev)) = dst.iter().find(|(e, _)| e.name == k.name) {
                        if ev.to_json() != v.to_json() {
                            self.diags.push(Diagnostic::new(
                                ek.pos.clone(),
                                join_path(section, &k.name),
                                format!(
                                    "`{}` is defined here and also by the included file {} ({}); rename one",
                                    k.name, paths[0].0, k.pos
                                ),
                            ));
                        }
                        continue;
                    }
                    dst.push((
                        Key {
                            name: k.name.clone(),
                            pos: k.pos.clone(),
                        },
                        v.clone(),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn is_remote(s: &str) -> bool {
    s.contains("://") || s.starts_with("git@") || s.starts_with("github.com/")
}

fn resolve_str(n: &mut Node, base: &Path, home: Option<&str>) {
    if let Kind::Str(s) = &mut n.kind
        && let Some(r) = resolve_path_text(s, base, home)
    {
        *s = r;
    }
}

/// Absolute form of a relative or `~` path; None if already absolute or remote.
fn resolve_path_text(s: &str, base: &Path, home: Option<&str>) -> Option<String> {
    if s.is_empty() || is_remote(s) || s.starts_with('/') {
        return None;
    }
    if let Some(rest) = s.strip_prefix('~') {
        let home = home?;
        let rest = rest.trim_start_matches('/');
        return Some(
            clean(&Path::new(home).join(rest))
                .to_string_lossy()
                .into_owned(),
        );
    }
    Some(abs(base, Path::new(s)).to_string_lossy().into_owned())
}

fn resolve_path_list(n: &mut Node, base: &Path, home: Option<&str>) {
    match &mut n.kind {
        Kind::Str(_) => resolve_str(n, base, home),
        Kind::Seq(items) => {
            for it in items {
                match &mut it.kind {
                    Kind::Str(_) => resolve_str(it, base, home),
                    Kind::Map(_) => {
                        if let Some(p) = it.get_mut("path") {
                            resolve_str(p, base, home);
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

/// Makes the relative paths of one file absolute against `base` (the project directory for the
/// main files, the file's own directory for extended and included files), so they stay right
/// after files from different directories are merged.
pub fn resolve_paths(root: &mut Node, base: &Path, home: Option<&str>) {
    if let Some(services) = root.get_mut("services").and_then(Node::as_map_mut) {
        for (_, svc) in services.iter_mut() {
            resolve_service_paths(svc, base, home);
        }
    }
    for section in ["secrets", "configs"] {
        if let Some(m) = root.get_mut(section).and_then(Node::as_map_mut) {
            for (_, v) in m.iter_mut() {
                if let Some(f) = v.get_mut("file") {
                    resolve_str(f, base, home);
                }
            }
        }
    }
    if let Some(m) = root.get_mut("disks").and_then(Node::as_map_mut) {
        for (_, v) in m.iter_mut() {
            if let Some(f) = v.get_mut("source") {
                resolve_str(f, base, home);
            }
        }
    }
    // A local volume bound to a host directory (`driver_opts: {o: bind, device: ./data}`):
    // relative to the declaring file, as compose-go resolves it.
    if let Some(m) = root.get_mut("volumes").and_then(Node::as_map_mut) {
        for (_, v) in m.iter_mut() {
            if let Some(d) = v.get_mut("driver_opts").and_then(|o| o.get_mut("device"))
                && d.as_str()
                    .is_some_and(|t| t.starts_with('.') || t.starts_with('~'))
            {
                resolve_str(d, base, home);
            }
        }
    }
    // `include` paths are resolved by resolve_include against the same base.
}

fn resolve_service_paths(svc: &mut Node, base: &Path, home: Option<&str>) {
    if let Some(b) = svc.get_mut("build") {
        match &mut b.kind {
            Kind::Str(_) => resolve_str(b, base, home),
            Kind::Map(_) => {
                match b.get_mut("context") {
                    Some(c) => resolve_str(c, base, home),
                    // No context: the declaring file's directory, as Compose makes it (also
                    // when the service comes to another file through extends or include).
                    None => {
                        let pos = b.pos.clone();
                        if let Some(m) = b.as_map_mut() {
                            m.push((
                                super::node::Key {
                                    name: "context".into(),
                                    pos: pos.clone(),
                                },
                                Node::new(Kind::Str(base.to_string_lossy().into_owned()), pos),
                            ));
                        }
                    }
                }
                // Local directories among the additional contexts (not an image, a URL or
                // another build's stage).
                if let Some(m) = b.get_mut("additional_contexts").and_then(Node::as_map_mut) {
                    for (_, v) in m.iter_mut() {
                        let local = v.as_str().is_some_and(|t| {
                            !t.contains("://")
                                && !t.starts_with("service:")
                                && !t.starts_with("target:")
                        });
                        if local {
                            resolve_str(v, base, home);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    for key in ["env_file", "label_file"] {
        if let Some(e) = svc.get_mut(key) {
            resolve_path_list(e, base, home);
        }
    }
    if let Some(ext) = svc.get_mut("extends")
        && let Some(f) = ext.get_mut("file")
    {
        resolve_str(f, base, home);
    }
    if let Some(Kind::Seq(vols)) = svc.get_mut("volumes").map(|v| &mut v.kind) {
        for v in vols.iter_mut() {
            match &mut v.kind {
                Kind::Str(s) => {
                    // Short syntax: a source starting with `.`, `/` or `~` is a bind mount.
                    let parts: Vec<&str> = s.splitn(2, ':').collect();
                    if parts.len() == 2
                        && (parts[0].starts_with('.') || parts[0].starts_with('~'))
                        && let Some(r) = resolve_path_text(parts[0], base, home)
                    {
                        *s = format!("{r}:{}", parts[1]);
                    }
                }
                Kind::Map(_) => {
                    if v.get("type").and_then(Node::as_str) == Some("bind")
                        && let Some(src) = v.get_mut("source")
                    {
                        resolve_str(src, base, home);
                    }
                }
                _ => {}
            }
        }
    }
    if let Some(Kind::Map(_)) = svc.get("develop").map(|d| &d.kind)
        && let Some(Kind::Seq(w)) = svc
            .get_mut("develop")
            .and_then(|d| d.get_mut("watch"))
            .map(|w| &mut w.kind)
    {
        for item in w.iter_mut() {
            if let Some(p) = item.get_mut("path") {
                resolve_str(p, base, home);
            }
        }
    }
}

/// berth's own keys may also be written as Compose extensions, so that one file serves both
/// tools (`docker compose` refuses keys it does not know, and ignores `x-` ones):
/// `x-berth-disks` at the top level, `x-berth-disks` and `x-berth-bandwidth` in a service. They
/// are read as the plain keys, before anything else, so they mean and are checked the same, and
/// give the same configuration hash. Both forms of one key in one place is an error.
pub const BERTH_KEYS: [(&str, &[&str]); 2] =
    [("", &["disks"]), ("service", &["disks", "bandwidth"])];

fn berth_extensions(root: &mut Node, diags: &mut Diagnostics) {
    fn rename(map: &mut Node, keys: &[&str], at: &str, diags: &mut Diagnostics) {
        let Some(entries) = map.as_map_mut() else {
            return;
        };
        for key in keys {
            let ext = format!("x-berth-{key}");
            let Some(i) = entries.iter().position(|(k, _)| k.name == ext) else {
                continue;
            };
            if entries.iter().any(|(k, _)| k.name == *key) {
                diags.push(Diagnostic::new(
                    entries[i].0.pos.clone(),
                    format!("{at}{ext}"),
                    format!("`{ext}` and `{key}` are the same key; keep one"),
                ));
                continue;
            }
            entries[i].0.name = key.to_string();
        }
    }
    rename(root, BERTH_KEYS[0].1, "", diags);
    if let Some(services) = root.get_mut("services").and_then(Node::as_map_mut) {
        for (name, svc) in services.iter_mut() {
            let at = format!("services.{}.", super::validate::quote_key(&name.name));
            rename(svc, BERTH_KEYS[1].1, &at, diags);
        }
    }
}
