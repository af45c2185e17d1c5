//! The project file: from YAML on disk to a typed, validated `Project` (pure data).
//!
//! load → interpolate → extends/include → merge (`load`, `interpolate`, `merge`), then the JSON
//! Schema (`schema`), then the typed model with long forms (`normalize`, `model`, `de`), then
//! cross-references (`validate`). Every error names file:line:col and the key path.

pub mod de;
pub mod diag;
pub mod interpolate;
pub mod load;
pub mod merge;
pub mod model;
pub mod node;
pub mod node_de;
pub mod normalize;
pub mod schema;
pub mod units;
pub mod validate;

use std::collections::BTreeSet;
use std::path::PathBuf;

pub use diag::{Diagnostic, Diagnostics, Pos};
pub use load::{LoadOptions, valid_project_name};
pub use model::Project;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no project file found in {dir} or its parents (looked for {})", load::DEFAULT_FILES.join(", "))]
    NoProjectFile { dir: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "invalid project name `{0}`: use lowercase letters, digits, `-` and `_`, starting with a letter or digit"
    )]
    BadProjectName(String),
    #[error("{}", render(.0))]
    Invalid(Diagnostics),
}

fn render(d: &Diagnostics) -> String {
    let mut s = d.to_string();
    let n = d.len();
    s.push_str(&format!(
        "{n} error{} in the project file{}",
        if n == 1 { "" } else { "s" },
        if n == 1 { "" } else { "s" }
    ));
    s
}

/// A loaded project with what the loader learned on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub project: Project,
    pub project_dir: PathBuf,
    pub files: Vec<PathBuf>,
    /// Every profile named by any service (active or not).
    pub all_profiles: BTreeSet<String>,
    /// Services set aside because none of their profiles is active.
    pub inactive: normalize::Inactive,
    /// Non-fatal remarks (obsolete `version`...).
    pub warnings: Vec<String>,
    /// The merged tree, kept so later checks (dependency cycles) can point into the files.
    pub tree: node::Node,
    /// Problems found after the model was built (references...). The caller adds its own
    /// (cycles) and fails if any.
    pub errors: Diagnostics,
}

/// Loads, validates and normalizes the project the options describe.
///
/// Structural problems (YAML, schema, values) fail here; cross-reference problems are returned
/// in `Loaded::errors` so the caller can add the graph's findings and report all at once.
pub fn load(opts: &LoadOptions) -> Result<Loaded, LoadError> {
    let raw = load::load_raw(opts)?;
    // The schema check (on a JSON copy of the tree) and the typed decode (straight from the
    // tree) are independent: run them on both cores. The decode's result is used only if the
    // schema found nothing (it never panics on a malformed tree; it reports).
    let (schema_diags, (project, inactive), decode_diags) = std::thread::scope(|s| {
        let schema = s.spawn(|| {
            if opts.skip_schema {
                Diagnostics::default()
            } else {
                schema::validate(&raw.root)
            }
        });
        let mut d = Diagnostics::default();
        let normalized = normalize::normalize(&raw, &mut d);
        let schema_diags = schema.join().unwrap_or_else(|_| {
            Diagnostics(vec![Diagnostic::new(
                raw.root.pos.clone(),
                "",
                "internal error: the schema check failed",
            )])
        });
        (schema_diags, normalized, d)
    });
    if !schema_diags.is_empty() {
        return Err(LoadError::Invalid(schema_diags.finish()));
    }
    if !decode_diags.is_empty() {
        return Err(LoadError::Invalid(decode_diags.finish()));
    }
    let mut errors = Diagnostics::default();
    validate::validate(&project, &inactive, &raw.root, &mut errors);
    let mut all_profiles: BTreeSet<String> = project
        .services
        .values()
        .flat_map(|s| s.profiles.iter().cloned())
        .collect();
    for ps in inactive.services.values() {
        all_profiles.extend(ps.iter().cloned());
    }
    Ok(Loaded {
        project,
        project_dir: raw.project_dir,
        files: raw.files,
        all_profiles,
        inactive,
        warnings: raw.warnings,
        tree: raw.root,
        errors,
    })
}

/// The project as `berth config` prints it: normalized, keys sorted, and every `$` written as
/// `$$` so that loading the output again interpolates nothing.
pub fn rendered(project: &Project) -> serde_json::Value {
    fn escape(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) if s.contains('$') => *s = s.replace('$', "$$"),
            serde_json::Value::Array(a) => a.iter_mut().for_each(escape),
            serde_json::Value::Object(m) => m.values_mut().for_each(escape),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(project).unwrap_or(serde_json::Value::Null);
    escape(&mut v);
    v
}

/// The project as written, for `config --no-interpolate`: its files merged (with `extends`,
/// `include` and relative paths resolved) and checked against the schema, which lets any value
/// holding a `${...}` through; nothing is interpolated, typed or normalized, so each `${VAR}`
/// (and each `$$`) prints as the file has it.
pub fn load_uninterpolated(opts: &LoadOptions) -> Result<serde_json::Value, LoadError> {
    let mut opts = opts.clone();
    opts.no_interpolate = true;
    let raw = load::load_raw(&opts)?;
    let diags = schema::validate(&raw.root);
    if !diags.is_empty() {
        return Err(LoadError::Invalid(diags.finish()));
    }
    Ok(raw.root.to_json())
}

/// `rendered` as YAML text.
pub fn to_yaml(project: &Project) -> String {
    serde_yaml::to_string(&rendered(project)).unwrap_or_default()
}
