//! The bad-input corpus (`tests/bad/<case>/`): each case must make `berth config` fail with
//! exit status 1, without a panic, printing exactly the snapshot in `error.txt`; every error
//! that `expect.txt` asks for must be among them (position and key path); and the JSON Schema
//! must agree with the loader on whether the file is structurally wrong.
//!
//! `BLESS=1 cargo test --test bad_inputs` rewrites the snapshots after a deliberate change.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use berth::spec::{node, schema};

struct Expect {
    file: Option<String>,
    line: u32,
    column: u32,
    path: String,
    schema_rejects: Option<bool>,
}

fn parse_expect(text: &str) -> Vec<Expect> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut e = Expect {
            file: None,
            line: 0,
            column: 0,
            path: String::new(),
            schema_rejects: None,
        };
        let mut any = false;
        for l in block.lines() {
            let Some((k, v)) = l.split_once(':') else {
                continue;
            };
            let v = v.split(" #").next().unwrap_or_default().trim();
            any = true;
            match k.trim() {
                "file" => e.file = Some(v.to_string()),
                "line" => e.line = v.parse().unwrap_or(0),
                "column" => e.column = v.parse().unwrap_or(0),
                "path" => e.path = v.to_string(),
                "schema" => e.schema_rejects = Some(v == "reject"),
                _ => {}
            }
        }
        if any {
            out.push(e);
        }
    }
    out
}

fn cases() -> Vec<(String, std::path::PathBuf)> {
    let mut v: Vec<_> = std::fs::read_dir(common::repo().join("tests/bad"))
        .expect("tests/bad")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, p)
        })
        .collect();
    v.sort();
    v
}

fn run_case(dir: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["config", "-q"])
        .current_dir(dir)
        .env_clear()
        .output()
        .expect("run berth");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn at_least_thirty_cases() {
    assert!(cases().len() >= 30, "only {} bad inputs", cases().len());
}

#[test]
fn each_bad_input_fails_with_its_snapshot() {
    let bless = std::env::var_os("BLESS").is_some();
    let mut failures = Vec::new();
    for (name, dir) in cases() {
        let t = std::time::Instant::now();
        let (code, stderr) = run_case(&dir);
        let took = t.elapsed();
        if code != Some(1) || stderr.contains("panicked") {
            failures.push(format!("{name}: exit {code:?}, stderr:\n{stderr}"));
            continue;
        }
        // Hostile inputs (alias bombs, deep nesting, huge files) are refused, not expanded:
        // unguarded, they take hours or all memory. The bound is loose, for a loaded 2-core
        // machine running debug builds; how fast berth refuses them is not measured here.
        if took.as_secs() >= 30 {
            failures.push(format!("{name}: took {took:?}"));
        }
        let snap = dir.join("error.txt");
        if bless {
            std::fs::write(&snap, &stderr).expect("write snapshot");
        } else {
            match std::fs::read_to_string(&snap) {
                Ok(want) if want == stderr => {}
                Ok(want) => failures.push(format!(
                    "{name}: error output changed\n--- want\n{want}--- got\n{stderr}"
                )),
                Err(_) => failures.push(format!("{name}: no error.txt (run with BLESS=1)")),
            }
        }
        let expect = std::fs::read_to_string(dir.join("expect.txt")).unwrap_or_default();
        for e in parse_expect(&expect) {
            let file = e.file.clone().unwrap_or_else(|| "compose.yaml".into());
            let at = format!("{file}:{}:{}: ", e.line, e.column);
            let hit = stderr.lines().any(|l| {
                l.starts_with(&at)
                    && (e.path.is_empty() || l[at.len()..].starts_with(&format!("{}: ", e.path)))
            });
            if e.line > 0 && !hit {
                failures.push(format!(
                    "{name}: expected an error at {at}{}\ngot:\n{stderr}",
                    e.path
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn schema_and_loader_agree_on_bad_inputs() {
    let mut failures = Vec::new();
    for (name, dir) in cases() {
        let expect = std::fs::read_to_string(dir.join("expect.txt")).unwrap_or_default();
        let blocks = parse_expect(&expect);
        // The schema sees one file as written; only cases about compose.yaml itself count.
        let Some(want) = blocks
            .iter()
            .filter(|b| b.file.is_none())
            .find_map(|b| b.schema_rejects)
        else {
            continue;
        };
        let text = std::fs::read_to_string(dir.join("compose.yaml")).unwrap_or_default();
        let tree = match node::parse(&Arc::from("compose.yaml"), &text) {
            Ok(Some(t)) => t,
            // YAML the parser refuses: nothing for the schema to judge.
            _ => continue,
        };
        let rejects = !schema::validate(&tree).is_empty();
        // The loader rejects every case (checked above); a case marked `schema: reject` is one
        // the schema alone must also reject, and `accept` one only cross-checks catch.
        if rejects != want {
            failures.push(format!(
                "{name}: schema {} but expect.txt says {}",
                if rejects { "rejects" } else { "accepts" },
                if want { "reject" } else { "accept" }
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
