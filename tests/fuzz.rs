//! Bounded fuzzing of the loader (part of every test run): random bytes, random YAML built
//! from Compose-like pieces, and random mutations of the real samples. The loader must never
//! panic and never run away; it answers Ok or a diagnostic. `PROPTEST_CASES=20000 cargo test
//! --release --test fuzz` runs a longer campaign.

mod common;

use std::sync::Arc;

use berth::spec::node;
use proptest::prelude::*;

/// 256 cases per property in the test suite; `PROPTEST_CASES` for longer campaigns.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn load_text(text: &str) {
    let t = tempfile::tempdir().expect("tempdir");
    std::fs::write(t.path().join("compose.yaml"), text).expect("write");
    let o = common::opts_for(t.path());
    // Either outcome is fine; a panic or a hang is the failure.
    let _ = berth::load_project(&o);
}

fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("".to_string()),
        Just("null".to_string()),
        Just("true".to_string()),
        Just("no".to_string()),
        Just("-1".to_string()),
        Just("0440".to_string()),
        Just("99999".to_string()),
        Just("'8080:80'".to_string()),
        Just("\"${X:-1}\"".to_string()),
        Just("${UNSET:?boom}".to_string()),
        Just("$${esc}".to_string()),
        Just("1m30s".to_string()),
        Just("512m".to_string()),
        Just("host".to_string()),
        Just("[a, b]".to_string()),
        Just("{a: 1}".to_string()),
        Just("*anchor".to_string()),
        Just("&anchor x".to_string()),
        Just("!reset []".to_string()),
        "[a-z0-9:./_-]{0,12}".prop_map(|s| s),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("image"),
        Just("command"),
        Just("ports"),
        Just("volumes"),
        Just("environment"),
        Just("depends_on"),
        Just("networks"),
        Just("healthcheck"),
        Just("deploy"),
        Just("disks"),
        Just("bandwidth"),
        Just("restart"),
        Just("mem_limit"),
        Just("cpus"),
        Just("extends"),
        Just("network_mode"),
        Just("volumes_from"),
        Just("profiles"),
        Just("<<"),
        Just("x-a"),
        Just("secrets"),
        Just("build"),
        Just("scale"),
        Just("container_name"),
        Just("bogus"),
    ]
    .prop_map(str::to_string)
}

/// A YAML value of bounded depth built from Compose-shaped pieces.
fn value(depth: u32) -> BoxedStrategy<String> {
    let leaf = scalar().boxed();
    if depth == 0 {
        return leaf;
    }
    prop_oneof![
        3 => leaf,
        1 => prop::collection::vec(value(depth - 1), 0..4)
            .prop_map(|items| format!("[{}]", items.join(", "))),
        2 => prop::collection::vec((key(), value(depth - 1)), 0..4).prop_map(|kv| {
            let body: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k}: {v}")).collect();
            format!("{{{}}}", body.join(", "))
        }),
    ]
    .boxed()
}

fn project() -> impl Strategy<Value = String> {
    let service = prop::collection::vec((key(), value(3)), 0..6);
    prop::collection::vec(("[a-c]", service), 1..4).prop_map(|services| {
        let mut s = String::from("services:\n");
        for (name, keys) in services {
            s.push_str(&format!("  {name}:\n"));
            for (k, v) in keys {
                s.push_str(&format!("    {k}: {v}\n"));
            }
        }
        s.push_str("disks:\n  d: {kind: private, size: 1g}\nnetworks:\n  n: {}\n");
        s
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = node::parse(&Arc::from("fuzz.yaml"), &text);
    }

    #[test]
    fn compose_shaped_yaml_never_panics(text in project()) {
        load_text(&text);
    }

    #[test]
    fn mutated_samples_never_panic(pick in any::<prop::sample::Index>(), edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
        let files: Vec<_> = common::sample_dirs()
            .into_iter()
            .flat_map(|d| common::yaml_files(&d))
            .collect();
        let f = pick.get(&files);
        let mut bytes = std::fs::read(f).expect("read sample");
        if bytes.is_empty() {
            return Ok(());
        }
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        load_text(&String::from_utf8_lossy(&bytes));
    }
}
