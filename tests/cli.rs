//! The `berth` binary as a user runs it: exit statuses and the outputs of `config` and
//! `version`.

use std::path::Path;
use std::process::{Command, Output};

fn berth(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .output()
        .expect("run berth")
}

fn project(text: &str) -> tempfile::TempDir {
    let t = tempfile::tempdir().expect("tempdir");
    std::fs::write(t.path().join("compose.yaml"), text).expect("write");
    t
}

const GOOD: &str = "name: demo\nservices:\n  web:\n    image: nginx\n    ports: ['8080:80']\n    depends_on: [db]\n    profiles: [front]\n  db:\n    image: postgres\n    volumes: ['data:/var/lib/postgresql/data']\nvolumes:\n  data: {}\n";

#[test]
fn config_prints_yaml_and_json() {
    let t = project(GOOD);
    let out = berth(t.path(), &["--profile", "front", "config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8_lossy(&out.stdout);
    assert!(
        yaml.contains("published: '8080'") || yaml.contains("published: \"8080\""),
        "{yaml}"
    );
    let out = berth(
        t.path(),
        &["--profile", "front", "config", "--format", "json"],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["services"]["web"]["ports"][0]["target"], 80);
    assert_eq!(v["volumes"]["data"]["name"], "demo_data");
}

#[test]
fn config_lists() {
    let t = project(GOOD);
    let run = |args: &[&str]| String::from_utf8_lossy(&berth(t.path(), args).stdout).into_owned();
    // Dependencies first; `web` is only there with its profile.
    assert_eq!(run(&["config", "--services"]), "db\n");
    assert_eq!(
        run(&["--profile", "front", "config", "--services"]),
        "db\nweb\n"
    );
    assert_eq!(run(&["config", "--profiles"]), "front\n");
    assert_eq!(run(&["config", "--volumes"]), "data\n");
    let hashes = run(&["--profile", "*", "config", "--hash", "*"]);
    let lines: Vec<&str> = hashes.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(
        lines[0].starts_with("db ") && lines[0].len() == 3 + 64,
        "{hashes}"
    );
    let one = run(&["config", "--hash", "db"]);
    assert_eq!(one.trim(), lines[0]);
}

#[test]
fn quiet_validation_and_exit_statuses() {
    let t = project(GOOD);
    let ok = berth(t.path(), &["config", "-q"]);
    assert!(ok.status.success());
    assert!(ok.stdout.is_empty());
    let bad = project("services:\n  web:\n    imgae: nginx\n");
    let out = berth(bad.path(), &["config", "-q"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("compose.yaml:3:5: services.web.imgae: unknown key"),
        "{err}"
    );
    let missing = berth(t.path(), &["config", "--hash", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
}

#[test]
fn cp_says_which_side_is_missing() {
    let t = project(GOOD);
    let out = berth(t.path(), &["cp", "a.txt", "b.txt"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("write one as SERVICE:PATH"), "{err}");
    let out = berth(t.path(), &["cp", "web:/a", "db:/b"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("between two containers"));
}

#[test]
fn version() {
    let t = project(GOOD);
    let out = berth(t.path(), &["version", "--short"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        env!("CARGO_PKG_VERSION")
    );
    let out = berth(t.path(), &["version", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn a_huge_file_is_refused_quickly() {
    let t = tempfile::tempdir().expect("tempdir");
    let f = std::fs::File::create(t.path().join("compose.yaml")).expect("create");
    f.set_len(17 * 1024 * 1024).expect("sparse file");
    let start = std::time::Instant::now();
    let out = berth(t.path(), &["config", "-q"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most"));
    // Not read whole (a bound for a loaded machine, not a speed figure).
    assert!(start.elapsed().as_secs() < 30);
}

#[test]
fn image_import_list_and_remove() {
    if !nix::unistd::Uid::effective().is_root() || !berth::image::testutil::busybox_available() {
        eprintln!("skipped: needs root and busybox-static");
        return;
    }
    let state = tempfile::tempdir().expect("state");
    let tar = berth::image::testutil::busybox_docker_save(state.path());
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(args)
            .env_clear()
            .env("BERTH_ROOT", state.path().join("root"))
            .output()
            .expect("run berth")
    };
    let out = run(&["image", "import", tar.to_str().unwrap_or_default()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Loaded image: busybox"));
    let out = run(&["images"]);
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        list.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("busybox")),
        "{list}"
    );
    let out = run(&["image", "inspect", "busybox"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    // Docker's shape: the config as the image has it, the tags, the digests.
    assert_eq!(v[0]["Config"]["Cmd"][0], "sh", "{v}");
    assert_eq!(v[0]["RepoTags"][0], "busybox:latest", "{v}");
    assert_eq!(v[0]["Os"], "linux", "{v}");
    assert!(
        v[0]["RootFS"]["Layers"][0]
            .as_str()
            .is_some_and(|l| l.starts_with("sha256:"))
    );
    let out = run(&["rmi", "busybox"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["images", "-q"]);
    assert!(out.stdout.is_empty());
    let out = run(&["image", "import", "/no/such.tar"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
}

#[test]
fn completions_cover_every_verb() {
    let t = tempfile::tempdir().expect("tempdir");
    for shell in ["bash", "zsh", "fish"] {
        let out = berth(t.path(), &["completion", shell]);
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        for verb in ["up", "down", "exec", "logs", "stats", "events", "enable"] {
            assert!(text.contains(verb), "{shell} completion lacks {verb}");
        }
    }
}

#[test]
fn a_provider_service_loads_and_up_refuses_it_before_changing_anything() {
    let t = project(
        "services:\n  web:\n    image: busybox\n    depends_on: [ai]\n  ai:\n    provider:\n      type: model\n      options:\n        model: ai/smollm2\n",
    );
    let out = berth(t.path(), &["config", "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["services"]["ai"]["provider"]["type"], "model");
    assert_eq!(
        v["services"]["ai"]["provider"]["options"]["model"],
        "ai/smollm2"
    );
    let root = t.path().join("state");
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("up")
        .current_dir(t.path())
        .env_clear()
        .env("BERTH_ROOT", &root)
        .output()
        .expect("run berth");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("compose.yaml:7:7: services.ai.provider: `ai` is run by the provider `model`"),
        "{err}"
    );
    assert!(!root.exists(), "up changed nothing: no state root");
}

#[test]
fn a_project_file_is_read_from_standard_input_with_dash() {
    use std::io::Write;
    let t = tempfile::tempdir().expect("tempdir");
    let run = |text: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["-f", "-", "config", "--format", "json"])
            .current_dir(t.path())
            .env_clear()
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run berth");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
        child.wait_with_output().expect("wait")
    };
    let out = run("name: piped\nservices:\n  a:\n    image: busybox\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["name"], "piped");
    assert_eq!(v["services"]["a"]["image"], "busybox");
    // Its errors point into it as `-`.
    let out = run("services:\n  a:\n    imag: busybox\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("-:3:5: services.a.imag: unknown key"), "{err}");
}

#[test]
fn config_no_interpolate_prints_the_variables_as_written() {
    let t = project(
        "services:\n  a:\n    image: busybox:${TAG:-1}\n    mem_limit: ${MEM}\n    ports:\n      - target: 80\n        published: \"${PORT}\"\n        x-note: kept\n    environment:\n      X: $${LIT}\n",
    );
    let out = berth(
        t.path(),
        &["config", "--no-interpolate", "--format", "json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let a = &v["services"]["a"];
    assert_eq!(a["image"], "busybox:${TAG:-1}");
    assert_eq!(a["mem_limit"], "${MEM}");
    assert_eq!(a["ports"][0]["published"], "${PORT}");
    assert_eq!(a["ports"][0]["x-note"], "kept");
    assert_eq!(a["environment"]["X"], "$${LIT}");
    // What holds no variable is still checked.
    let t = project("services:\n  a:\n    image: busybox\n    mem_limit: [1]\n");
    let out = berth(t.path(), &["config", "--no-interpolate"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("compose.yaml:4:16: services.a.mem_limit")
    );
}

#[test]
fn a_missing_env_file_stops_only_what_needs_it() {
    let t = project(
        "services:\n  a:\n    image: busybox\n    depends_on: [c]\n  b:\n    image: busybox\n    env_file: missing.env\n  c:\n    image: busybox\n",
    );
    // A command about `a` (and `c`, which it needs) loads without `b`'s file, as Compose does.
    let out = berth(t.path(), &["config", "--hash", "a"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("a "));
    // What needs `b` says which file is missing, and where.
    for args in [&["config", "--hash", "b"][..], &["config"][..]] {
        let out = berth(t.path(), args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(
                "compose.yaml:7:15: services.b.env_file: env file missing.env does not exist"
            ),
            "{err}"
        );
    }
}
