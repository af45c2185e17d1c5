//! The loader's rules, each on a small project written to a temporary directory: file
//! discovery, environment precedence, merging, extends, include, profiles, and hash stability.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use berth::plan::config_hash;
use berth::spec::model::Condition;
use berth::spec::{LoadError, LoadOptions};

fn write(dir: &Path, name: &str, text: &str) {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(p, text).expect("write");
}

fn opts(dir: &Path) -> LoadOptions {
    LoadOptions {
        environ: BTreeMap::new(),
        cwd: dir.to_path_buf(),
        ..LoadOptions::default()
    }
}

fn load(o: &LoadOptions) -> berth::Project {
    match berth::load_project(o) {
        Ok(p) => p,
        Err(e) => panic!("load failed:\n{e}"),
    }
}

fn load_err(o: &LoadOptions) -> String {
    match berth::load_project(o) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn default_file_order_and_override() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write(
        d,
        "docker-compose.yml",
        "services:\n  a:\n    image: from-docker-compose\n",
    );
    write(
        d,
        "compose.yaml",
        "services:\n  a:\n    image: from-compose\n",
    );
    write(
        d,
        "compose.override.yaml",
        "services:\n  a:\n    environment: [X=1]\n",
    );
    let p = load(&opts(d));
    let a = &p.loaded.project.services["a"];
    assert_eq!(a.image.as_deref(), Some("from-compose"));
    assert_eq!(a.environment["X"].as_deref(), Some("1"));
    // berth.yaml comes first of all.
    write(d, "berth.yaml", "services:\n  a:\n    image: from-berth\n");
    let p = load(&opts(d));
    assert_eq!(
        p.loaded.project.services["a"].image.as_deref(),
        Some("from-berth")
    );
    assert!(p.loaded.project.services["a"].environment.is_empty());
}

#[test]
fn discovery_walks_up_from_the_working_directory() {
    let t = tempfile::tempdir().unwrap();
    write(t.path(), "compose.yaml", "services:\n  a:\n    image: x\n");
    std::fs::create_dir_all(t.path().join("sub/deeper")).unwrap();
    let mut o = opts(&t.path().join("sub/deeper"));
    o.cwd = t.path().join("sub/deeper");
    let p = load(&o);
    assert_eq!(p.loaded.project_dir, t.path());
}

#[test]
fn no_project_file_is_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let e = load_err(&opts(t.path()));
    assert!(e.contains("no project file found"), "{e}");
}

#[test]
fn shell_environment_wins_over_dotenv() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write(d, ".env", "TAG=from-dotenv\nOTHER=dotenv-only\n");
    write(
        d,
        "compose.yaml",
        "services:\n  a:\n    image: app:${TAG}\n    environment:\n      O: $OTHER\n",
    );
    let mut o = opts(d);
    let p = load(&o);
    assert_eq!(
        p.loaded.project.services["a"].image.as_deref(),
        Some("app:from-dotenv")
    );
    o.environ.insert("TAG".into(), "from-shell".into());
    let p = load(&o);
    let a = &p.loaded.project.services["a"];
    assert_eq!(a.image.as_deref(), Some("app:from-shell"));
    assert_eq!(a.environment["O"].as_deref(), Some("dotenv-only"));
}

#[test]
fn env_file_option_replaces_dotenv() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write(d, ".env", "TAG=dotenv\n");
    write(d, "prod.env", "TAG=prod\n");
    write(
        d,
        "compose.yaml",
        "services:\n  a:\n    image: app:${TAG:-none}\n",
    );
    let mut o = opts(d);
    o.env_files = vec!["prod.env".into()];
    let p = load(&o);
    assert_eq!(
        p.loaded.project.services["a"].image.as_deref(),
        Some("app:prod")
    );
}

#[test]
fn compose_variables_are_honoured() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write(
        d,
        "one.yaml",
        "services:\n  a:\n    image: x\n  dbg:\n    image: y\n    profiles: [debug]\n",
    );
    write(d, "two.yaml", "services:\n  a:\n    command: [run]\n");
    let mut o = opts(d);
    o.environ
        .insert("COMPOSE_FILE".into(), "one.yaml:two.yaml".into());
    o.environ
        .insert("COMPOSE_PROJECT_NAME".into(), "fromenv".into());
    o.environ.insert("COMPOSE_PROFILES".into(), "debug".into());
    let p = load(&o);
    let pr = &p.loaded.project;
    assert_eq!(pr.name, "fromenv");
    assert_eq!(pr.services["a"].command, Some(vec!["run".to_string()]));
    assert!(pr.services.contains_key("dbg"));
    // -p wins over the variable; without the profile the service is set aside.
    o.project_name = Some("fromflag".into());
    o.environ.remove("COMPOSE_PROFILES");
    let p = load(&o);
    assert_eq!(p.loaded.project.name, "fromflag");
    assert!(!p.loaded.project.services.contains_key("dbg"));
    assert!(p.loaded.all_profiles.contains("debug"));
}

#[test]
fn project_name_defaults_to_directory_and_rejects_bad_names() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("My App.v2");
    write(&d, "compose.yaml", "services:\n  a:\n    image: x\n");
    let p = load(&opts(&d));
    assert_eq!(p.loaded.project.name, "myappv2");
    let mut o = opts(&d);
    o.project_name = Some("Bad Name".into());
    assert!(matches!(
        berth::load_project(&o),
        Err(LoadError::BadProjectName(_))
    ));
}

#[test]
fn merge_rules_of_several_files() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write(
        d,
        "a.yaml",
        "services:\n  web:\n    image: a\n    command: [one, two]\n    ports: ['80:80']\n    environment: [A=1, B=2]\n    labels: {l1: x}\n    volumes: ['./a:/data', 'logs:/logs']\n    dns: [1.1.1.1]\nvolumes:\n  logs: {}\n",
    );
    write(
        d,
        "b.yaml",
        "services:\n  web:\n    command: three\n    ports: ['81:81']\n    environment: {B: '3'}\n    labels: [l2=y]\n    volumes: ['./b:/data']\n    dns: [8.8.8.8]\n    healthcheck:\n      test: [CMD, 'true']\n",
    );
    let mut o = opts(d);
    o.files = vec!["a.yaml".into(), "b.yaml".into()];
    let p = load(&o);
    let w = &p.loaded.project.services["web"];
    assert_eq!(w.command, Some(vec!["three".to_string()]));
    assert_eq!(w.ports.len(), 2);
    assert_eq!(w.environment["A"].as_deref(), Some("1"));
    assert_eq!(w.environment["B"].as_deref(), Some("3"));
    assert_eq!(w.labels.len(), 2);
    assert_eq!(w.dns, vec!["1.1.1.1", "8.8.8.8"]);
    assert_eq!(w.volumes.len(), 2);
    let data = w.volumes.iter().find(|m| m.target == "/data").unwrap();
    assert_eq!(data.source.as_deref(), Some(d.join("b").to_str().unwrap()));
}

#[test]
fn reset_and_override_tags() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write(
        d,
        "compose.yaml",
        "services:\n  web:\n    image: a\n    ports: ['80:80']\n    environment: {A: '1', B: '2'}\n",
    );
    write(
        d,
        "compose.override.yaml",
        "services:\n  web:\n    ports: !reset []\n    environment: !override {C: '3'}\n",
    );
    let p = load(&opts(d));
    let w = &p.loaded.project.services["web"];
    assert!(w.ports.is_empty());
    assert_eq!(w.environment.keys().collect::<Vec<_>>(), vec!["C"]);
}

#[test]
fn extends_other_file_resolves_its_paths_from_its_directory() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write(
        d,
        "common/base.yaml",
        "services:\n  base:\n    image: base\n    env_file: base.env\n    environment: {FROM: base}\n    volumes: ['./data:/data']\n",
    );
    write(d, "common/base.env", "SECRET=s3\n");
    write(
        d,
        "compose.yaml",
        "services:\n  web:\n    extends:\n      file: common/base.yaml\n      service: base\n    environment: {FROM: web}\n  job:\n    extends: web\n    command: [echo]\n",
    );
    let p = load(&opts(d));
    let pr = &p.loaded.project;
    let w = &pr.services["web"];
    assert_eq!(w.image.as_deref(), Some("base"));
    assert_eq!(w.environment["FROM"].as_deref(), Some("web"));
    assert_eq!(w.environment["SECRET"].as_deref(), Some("s3"));
    assert_eq!(
        w.volumes[0].source.as_deref(),
        Some(d.join("common/data").to_str().unwrap())
    );
    assert_eq!(pr.services["job"].image.as_deref(), Some("base"));
    assert!(!pr.services.contains_key("base"));
}

#[test]
fn extends_cycle_is_an_error() {
    let t = tempfile::tempdir().unwrap();
    write(
        t.path(),
        "compose.yaml",
        "services:\n  a:\n    image: x\n    extends: b\n  b:\n    extends: a\n",
    );
    let e = load_err(&opts(t.path()));
    assert!(e.contains("`extends` forms a cycle"), "{e}");
}

#[test]
fn include_brings_services_with_their_own_env() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write(
        d,
        "db/compose.yaml",
        "services:\n  db:\n    image: postgres:${PGV}\n    volumes: ['./init:/init']\n",
    );
    write(d, "db/.env", "PGV=16\n");
    write(
        d,
        "compose.yaml",
        "include:\n  - db/compose.yaml\nservices:\n  web:\n    image: x\n    depends_on: [db]\n",
    );
    let p = load(&opts(d));
    let pr = &p.loaded.project;
    assert_eq!(pr.services["db"].image.as_deref(), Some("postgres:16"));
    assert_eq!(
        pr.services["db"].volumes[0].source.as_deref(),
        Some(d.join("db/init").to_str().unwrap())
    );
}

#[test]
fn include_conflict_is_an_error() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write(d, "other.yaml", "services:\n  web:\n    image: other\n");
    write(
        d,
        "compose.yaml",
        "include: [other.yaml]\nservices:\n  web:\n    image: mine\n",
    );
    let e = load_err(&opts(d));
    assert!(e.contains("also by the included file"), "{e}");
}

#[test]
fn env_file_forms() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write(d, "a.env", "A=1\nQ=\"quoted $A\"\n");
    write(d, "raw.env", "R='kept as is' # and this\n");
    write(
        d,
        "compose.yaml",
        "services:\n  s:\n    image: x\n    env_file:\n      - a.env\n      - path: raw.env\n        format: raw\n      - path: missing.env\n        required: false\n    environment:\n      - A=override\n      - FROM_SHELL\n      - UNSET_ONE\n",
    );
    let mut o = opts(d);
    o.environ.insert("FROM_SHELL".into(), "yes".into());
    let p = load(&o);
    let env = &p.loaded.project.services["s"].environment;
    assert_eq!(env["A"].as_deref(), Some("override"));
    assert_eq!(env["Q"].as_deref(), Some("quoted 1"));
    assert_eq!(env["R"].as_deref(), Some("'kept as is' # and this"));
    assert_eq!(env["FROM_SHELL"].as_deref(), Some("yes"));
    assert_eq!(env["UNSET_ONE"], None);
}

#[test]
fn yaml_and_compose_quirks() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write(
        d,
        "compose.yaml",
        "version: '3.8'\nx-common: &common\n  restart: no\n  labels: {team: core}\nservices:\n  a:\n    <<: *common\n    image: host\n    cpus: ${CPUS:-0.5}\n    mem_limit: 512m\n    stop_grace_period: 1m30s\n    x-note: kept\n  b:\n    image: host\n    restart: 'no'\n    secrets:\n      - source: s\n        mode: 0440\nsecrets:\n  s:\n    content: hi\n",
    );
    let p = load(&opts(d));
    let a = &p.loaded.project.services["a"];
    assert_eq!(a.restart.as_ref().map(|r| r.0.as_str()), Some("no"));
    assert_eq!(a.cpus, Some(0.5));
    assert_eq!(a.mem_limit, Some(512 << 20));
    assert_eq!(
        a.stop_grace_period.map(|d| d.to_string()).as_deref(),
        Some("1m30s")
    );
    assert_eq!(a.labels["team"], "core");
    assert!(a.extra.contains_key("x-note"));
    assert_eq!(p.loaded.project.services["b"].secrets[0].mode, Some(0o440));
    assert!(p.loaded.warnings.iter().any(|w| w.contains("obsolete")));
}

#[test]
fn hash_survives_reformatting_and_syntax_changes() {
    let t = tempfile::tempdir().unwrap();
    let d1 = t.path().join("one");
    let d2 = t.path().join("two");
    write(
        &d1,
        "compose.yaml",
        "services:\n  web:\n    image: nginx\n    ports: ['8080:80']\n    environment: [A=1, B=2]\n    command: nginx -g 'daemon off;'\n    depends_on: [db]\n  db:\n    image: pg\n",
    );
    write(
        &d2,
        "compose.yaml",
        "services:\n  db: {image: pg}\n  web:\n    depends_on:\n      db: {condition: service_started}\n    command: [nginx, -g, 'daemon off;']\n    environment: {B: '2', A: '1'}\n    ports:\n      - target: 80\n        published: '8080'\n    image: nginx\n",
    );
    let p1 = load(&opts(&d1));
    let p2 = load(&opts(&d2));
    let h = |p: &berth::Project, s: &str| {
        config_hash(&p.loaded.project.services[s], &p.loaded.project_dir)
    };
    assert_eq!(h(&p1, "web"), h(&p2, "web"));
    assert_eq!(h(&p1, "db"), h(&p2, "db"));
    assert_eq!(
        p1.loaded.project.services["web"].depends_on["db"].condition,
        Condition::ServiceStarted
    );
}

#[test]
fn all_errors_of_a_file_at_once_with_positions() {
    let t = tempfile::tempdir().unwrap();
    write(
        t.path(),
        "compose.yaml",
        "services:\n  web:\n    image: x\n    ports: ['8080:99999']\n    depends_on: [ghost]\n  db:\n    image: y\n    mem_limit: lots\n",
    );
    let e = load_err(&opts(t.path()));
    // The schema error stops the load before cross-references are checked, but within the
    // structural pass every error is listed.
    assert!(
        e.contains("compose.yaml:8:16: services.db.mem_limit"),
        "{e}"
    );
    write(
        t.path(),
        "compose.yaml",
        "services:\n  web:\n    image: x\n    ports: ['8080:99999', '70000']\n    depends_on: [ghost]\n  db:\n    image: y\n",
    );
    let e = load_err(&opts(t.path()));
    assert!(
        e.contains("compose.yaml:4:13: services.web.ports[0]"),
        "{e}"
    );
    assert!(
        e.contains("compose.yaml:4:27: services.web.ports[1]"),
        "{e}"
    );
}

#[test]
fn an_empty_override_file_adds_nothing_and_compose_restart_conditions_load() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write(
        d,
        "compose.yaml",
        "services:\n  a:\n    image: busybox\n    deploy:\n      restart_policy:\n        condition: unless-stopped\n  b:\n    image: busybox\n    deploy:\n      restart_policy:\n        condition: always\n",
    );
    write(d, "compose.override.yaml", "");
    let p = load(&opts(d));
    let policy =
        |s: &str| berth::reconcile::restart::Policy::of(&p.loaded.project.services[s]).when;
    assert_eq!(policy("a"), berth::reconcile::restart::When::UnlessStopped);
    assert_eq!(policy("b"), berth::reconcile::restart::When::Always);
    // An empty first file is still an error.
    write(d, "compose.yaml", "");
    assert!(load_err(&opts(d)).contains("the file is empty"));
}

#[test]
fn berth_keys_written_as_extensions_load_as_the_plain_keys() {
    let plain = "name: p\nservices:\n  db:\n    image: busybox\n    bandwidth:\n      egress: 10mbit\n    disks:\n      - data:/var/lib/db\ndisks:\n  data:\n    kind: private\n    size: 1g\n";
    let ext = "name: p\nservices:\n  db:\n    image: busybox\n    x-berth-bandwidth:\n      egress: 10mbit\n    x-berth-disks:\n      - data:/var/lib/db\nx-berth-disks:\n  data:\n    kind: private\n    size: 1g\n";
    let load_text = |text: &str| {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), "compose.yaml", text);
        let p = load(&opts(t.path()));
        let svc = p.loaded.project.services["db"].clone();
        (
            svc.bandwidth.clone(),
            svc.disks.clone(),
            p.loaded.project.disks.clone(),
            config_hash(&svc, Path::new("/p")),
        )
    };
    let (a, b) = (load_text(plain), load_text(ext));
    assert!(a.0.is_some() && !a.1.is_empty() && !a.2.is_empty());
    assert_eq!(a, b);
    // Both forms of one key: an error that names the extension.
    let t = tempfile::tempdir().unwrap();
    write(
        t.path(),
        "compose.yaml",
        "services:\n  db:\n    image: busybox\n    bandwidth: {egress: 1mbit}\n    x-berth-bandwidth: {egress: 2mbit}\n",
    );
    let e = load_err(&opts(t.path()));
    assert!(e.contains("compose.yaml:5:5: services.db.x-berth-bandwidth: `x-berth-bandwidth` and `bandwidth` are the same key"), "{e}");
}

#[test]
fn paths_resolve_against_the_declaring_file_as_compose_resolves_them() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write(
        d,
        "sub/base.yaml",
        "services:\n  b:\n    build:\n      dockerfile: Dockerfile.x\n      additional_contexts:\n        extra: ./ctx\n        img: docker-image://busybox\nvolumes:\n  v:\n    driver_opts:\n      type: none\n      o: bind\n      device: ./data\n",
    );
    write(
        d,
        "compose.yaml",
        "include:\n  - sub/base.yaml\nservices:\n  a:\n    extends:\n      file: sub/base.yaml\n      service: b\n",
    );
    let p = load(&opts(d)).loaded.project;
    let sub = d.join("sub");
    for s in ["a", "b"] {
        // A build without a context: the directory of the file that declares it, absolute.
        let b = p.services[s].build.as_ref().expect("build");
        assert_eq!(Path::new(&b.context), sub, "{s}");
        let extra = &b.extra["additional_contexts"];
        assert_eq!(extra["extra"], sub.join("ctx").to_string_lossy().as_ref());
        assert_eq!(extra["img"], "docker-image://busybox");
    }
    let device = &p.volumes["v"].extra["driver_opts"]["device"];
    assert_eq!(device, sub.join("data").to_string_lossy().as_ref());
}

#[test]
fn env_files_in_order_compose_env_files_and_the_project_name_for_interpolation() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write(
        d,
        "compose.yaml",
        "name: proj\nservices:\n  a:\n    image: busybox\n    environment:\n      P: ${COMPOSE_PROJECT_NAME}\n      A: ${A}\n",
    );
    write(d, "e1", "A=one\n");
    write(d, "e2", "A=two\n");
    let env = |p: &berth::Project| p.loaded.project.services["a"].environment.clone();
    // Several --env-file: the later wins.
    let mut o = opts(d);
    o.env_files = vec!["e1".into(), "e2".into()];
    let e = env(&load(&o));
    assert_eq!(e["A"].as_deref(), Some("two"));
    // The name: from `name:`, then -p; interpolation sees it.
    assert_eq!(e["P"].as_deref(), Some("proj"));
    let mut o = opts(d);
    o.project_name = Some("other".into());
    assert_eq!(env(&load(&o))["P"].as_deref(), Some("other"));
    // COMPOSE_ENV_FILES, when no --env-file is given.
    let mut o = opts(d);
    o.environ.insert("COMPOSE_ENV_FILES".into(), "e2,e1".into());
    assert_eq!(env(&load(&o))["A"].as_deref(), Some("one"));
}

#[test]
fn an_included_files_env_file_fills_its_services_pass_through_variables() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    write(d, "sub/inc.env", "TOKEN=from-include\nW=w-value\n");
    write(
        d,
        "sub/compose.yaml",
        "services:\n  api:\n    image: busybox\n    environment:\n      - TOKEN\n      - OTHER\n  web:\n    image: busybox\n    environment:\n      W:\n",
    );
    write(
        d,
        "compose.yaml",
        "include:\n  - path: sub/compose.yaml\n    env_file: sub/inc.env\nservices:\n  a:\n    image: busybox\n",
    );
    let p = load(&opts(d)).loaded.project;
    let api = &p.services["api"].environment;
    assert_eq!(api["TOKEN"].as_deref(), Some("from-include"));
    // Not in the include's variables nor the shell's: left unset.
    assert_eq!(api.get("OTHER").cloned().flatten(), None);
    assert_eq!(
        p.services["web"].environment["W"].as_deref(),
        Some("w-value")
    );
}
