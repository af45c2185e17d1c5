//! End to end: `berth export` of a project (two services, a private disk with 50 MB of data,
//! a named volume, an imported image) and `berth import` of it under another state root and
//! project name; damaged archives refused with nothing created. Root and busybox-static.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

#[path = "support/env.rs"]
mod env;
use env::{Env, eventually, tail};

fn can_run() -> bool {
    if !nix::unistd::Uid::effective().is_root() || !berth::image::testutil::busybox_available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root with busybox-static"
        );
        eprintln!("skipped: needs root and busybox-static");
        return false;
    }
    true
}

const PROJECT: &str = "name: NAME
services:
  db:
    image: busybox
    command: [sleep, '3600']
    network_mode: none
    disks: [store:/data]
    volumes: [cache:/cache]
  web:
    build: .
    network_mode: none
    volumes: [cache:/cache]
volumes:
  cache: {}
disks:
  store: {kind: private, size: 96m}
";

/// The project, with the build context of its `web` service.
fn project(env: &Env, dir: &str, name: &str) -> std::path::PathBuf {
    let p = env.project(dir, &PROJECT.replace("NAME", name));
    std::fs::write(p.join("hello.txt"), "built\n").unwrap();
    std::fs::write(
        p.join("Dockerfile"),
        "FROM busybox\nCOPY hello.txt /hello.txt\nCMD [\"sleep\", \"3600\"]\n",
    )
    .unwrap();
    p
}

fn sh(env: &Env, dir: &Path, service: &str, script: &str) -> String {
    env.ok(dir, &["exec", "-T", service, "sh", "-c", script])
}

/// What a volume holds: every entry's name, mode, owner and time, and every file's sha256.
const LISTING: &str = "cd /cache && find . | sort | xargs stat -c '%n %a %u %g %Y %s %F' && find . -type f | sort | xargs sha256sum";

fn sha256_file(p: &Path) -> String {
    let o = std::process::Command::new("sha256sum")
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// What a state root holds that an import would have made.
fn made(state: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for d in ["volumes", "disks", "projects", "tmp"] {
        if let Ok(rd) = std::fs::read_dir(state.join(d)) {
            out.extend(
                rd.flatten()
                    .map(|e| format!("{d}/{}", e.file_name().to_string_lossy())),
            );
        }
    }
    if let Ok(t) = std::fs::read_to_string(state.join("images/repositories.json")) {
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        if v["images"].as_object().is_some_and(|m| !m.is_empty()) {
            out.push(format!("images: {}", v["images"]));
        }
    }
    out
}

#[test]
fn a_running_project_moves_to_another_root_with_every_byte() {
    if !can_run() {
        return;
    }
    let env = Env::new();
    let p = project(&env, "orig", "pexp");
    std::fs::write(p.join(".env"), "GREETING=hello\n").unwrap();
    let tar = berth::image::testutil::busybox_docker_save(env.dir.path());
    env.ok(&p, &["image", "import", tar.to_str().unwrap()]);
    let _down = env.down_on_drop(&p);
    env.ok(&p, &["up", "-d", "--wait"]);
    sh(
        &env,
        &p,
        "db",
        "dd if=/dev/urandom of=/data/blob bs=1M count=50 2>/dev/null && mkdir /data/sub && echo x > /data/sub/f",
    );
    sh(
        &env,
        &p,
        "web",
        "mkdir -p /cache/d/e && echo one > /cache/d/e/f && chmod 640 /cache/d/e/f && chown 7:8 /cache/d && ln -s d/e/f /cache/link && ln /cache/d/e/f /cache/hard && touch -d '2020-01-02 03:04:05' /cache/d/e/f",
    );
    let disk_sum = sh(&env, &p, "db", "sha256sum /data/blob /data/sub/f");
    let listing = sh(&env, &p, "web", LISTING);
    let pids: Vec<serde_json::Value> = ["pexp-db-1", "pexp-web-1"]
        .iter()
        .map(|n| env.container(&p, n)["Pid"].clone())
        .collect();

    // Exported while running: the services are paused for the copy, then resumed.
    let archive = env.dir.path().join("pexp.tar");
    let o = env.berth(&p, &["export", "-o", archive.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{}\n{err}", tail(&err));
    assert!(err.contains("Pausing") && err.contains("Resumed"), "{err}");
    assert!(err.contains("2 images, 1 volume, 1 private disk"), "{err}");
    // The original is untouched: same processes, running, same data.
    for (n, pid) in ["pexp-db-1", "pexp-web-1"].iter().zip(&pids) {
        let c = env.container(&p, n);
        assert_eq!(c["State"], "running", "{c}");
        assert_eq!(&c["Pid"], pid, "{c}");
    }
    assert_eq!(
        sh(&env, &p, "db", "sha256sum /data/blob /data/sub/f"),
        disk_sum
    );
    assert_eq!(sh(&env, &p, "web", LISTING), listing);
    // The private disk is carried by its data, not its holes: 50 MB in a 96 MiB disk.
    let size = std::fs::metadata(&archive).unwrap().len();
    assert!(size > 50 << 20 && size < 70 << 20, "{size}");

    // Imported into a fresh state root under another name, brought up: the same data.
    let other = Env::new();
    let o = other.berth(
        other.dir.path(),
        &["import", archive.to_str().unwrap(), "-p", "moved"],
    );
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{}\n{err}", tail(&err));
    let q = other.dir.path().join("moved");
    assert_eq!(
        std::fs::read_to_string(q.join("berth.yaml")).unwrap(),
        PROJECT.replace("NAME", "pexp")
    );
    assert!(
        std::fs::read_to_string(q.join(".env"))
            .unwrap()
            .contains("GREETING=hello")
    );
    let _down2 = other.down_on_drop(&q);
    other.ok(&q, &["up", "-d", "--wait"]);
    assert_eq!(
        other.container(&q, "moved-db-1")["State"],
        "running",
        "{:?}",
        other.ps(&q)
    );
    assert_eq!(
        sh(&other, &q, "db", "sha256sum /data/blob /data/sub/f"),
        disk_sum
    );
    assert_eq!(sh(&other, &q, "web", LISTING), listing);
    assert!(other.state.join("volumes/moved_cache/_data/d").is_dir());
    assert!(other.state.join("disks/moved_store/disk.img").is_file());
    let images = other.ok(&q, &["images"]);
    assert!(images.contains("busybox"), "{images}");
    // The built image is named for the new project, so `up` had nothing to build.
    assert!(images.contains("moved-web"), "{images}");
    assert_eq!(sh(&other, &q, "web", "cat /hello.txt"), "built\n");
    assert!(q.join("Dockerfile").is_file() && q.join("hello.txt").is_file());

    other.ok(&q, &["down", "-v", "-t", "0"]);
    env.ok(&p, &["down", "-v", "-t", "0"]);
}

/// The data offset and size of `member` in the tar at `path`.
fn member_at(path: &Path, pick: impl Fn(&str, u64) -> bool) -> (String, u64, u64) {
    let mut a = tar::Archive::new(std::fs::File::open(path).unwrap());
    let mut best: Option<(String, u64, u64)> = None;
    for e in a.entries().unwrap() {
        let e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let size = e.size();
        if pick(&name, size) && best.as_ref().is_none_or(|b| size > b.2) {
            best = Some((name, e.raw_file_position(), size));
        }
    }
    best.expect("a member to damage")
}

fn flip(src: &Path, dst: &Path, at: u64) {
    std::fs::copy(src, dst).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dst)
        .unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    let mut b = [0u8];
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0x20]).unwrap();
}

#[test]
fn damaged_archives_are_refused_and_a_stopped_project_streams_byte_for_byte() {
    if !can_run() {
        return;
    }
    let env = Env::new();
    let p = project(&env, "src", "pdmg");
    let tar = berth::image::testutil::busybox_docker_save(env.dir.path());
    env.ok(&p, &["image", "import", tar.to_str().unwrap()]);
    {
        let _down = env.down_on_drop(&p);
        env.ok(&p, &["up", "-d", "--wait"]);
        sh(
            &env,
            &p,
            "db",
            "dd if=/dev/urandom of=/data/blob bs=1M count=4 2>/dev/null",
        );
        sh(&env, &p, "web", "echo kept > /cache/k");
        env.ok(&p, &["down", "-t", "0"]);
    }
    let archive = env.dir.path().join("pdmg.tar");
    env.ok(&p, &["export", "-o", archive.to_str().unwrap()]);

    let target = Env::new();
    let refused = |bad: &Path, expect: &[&str]| {
        let o = target.berth(
            target.dir.path(),
            &["import", bad.to_str().unwrap(), "-p", "copy"],
        );
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "{err}");
        for e in expect {
            assert!(err.contains(e), "expected `{e}` in: {err}");
        }
        assert!(!target.dir.path().join("copy").exists(), "{err}");
        assert_eq!(made(&target.state), Vec::<String>::new(), "{err}");
    };

    // One flipped byte in a layer.
    let (layer, at, size) = member_at(&archive, |n, _| n.starts_with("images/blobs/"));
    let bad = env.dir.path().join("layer.tar");
    flip(&archive, &bad, at + size / 2);
    refused(&bad, &[&layer, "checksum", "nothing was imported"]);
    // One flipped byte in the disk's data.
    let (disk, at, size) = member_at(&archive, |n, _| n.starts_with("disks/"));
    let bad = env.dir.path().join("disk.tar");
    flip(&archive, &bad, at + size - 100);
    refused(&bad, &[&disk, "checksum"]);
    // One flipped byte in a volume's file.
    let (file, at, _) = member_at(&archive, |n, _| {
        n.starts_with("volumes/") && n.ends_with("/k")
    });
    let bad = env.dir.path().join("volume.tar");
    flip(&archive, &bad, at);
    refused(&bad, &["volumes/0/", "checksum"]);
    let _ = file;
    // Truncated, at half and just before the manifest.
    let full = std::fs::read(&archive).unwrap();
    for cut in [full.len() / 2, full.len() - 3000] {
        let bad = env.dir.path().join("cut.tar");
        std::fs::write(&bad, &full[..cut]).unwrap();
        refused(&bad, &["truncated"]);
    }
    // An image archive is not a project.
    refused(&tar, &["berth image import"]);

    // Streamed from one root to the other: the disk image arrives byte for byte.
    let script = format!(
        "cd '{}' && BERTH_ROOT='{}' '{}' export | (cd '{}' && BERTH_ROOT='{}' '{}' import - -p copy)",
        p.display(),
        env.state.display(),
        env!("CARGO_BIN_EXE_berth"),
        target.dir.path().display(),
        target.state.display(),
        env!("CARGO_BIN_EXE_berth"),
    );
    let o = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let a = env.state.join("disks/pdmg_store/disk.img");
    let b = target.state.join("disks/copy_store/disk.img");
    assert_eq!(sha256_file(&a), sha256_file(&b));
    assert_eq!(
        std::fs::metadata(&a).unwrap().len(),
        std::fs::metadata(&b).unwrap().len()
    );
    {
        use std::os::unix::fs::MetadataExt;
        // Holes stay holes.
        let blocks = std::fs::metadata(&b).unwrap().blocks() * 512;
        assert!(blocks < 40 << 20, "{blocks}");
    }
    assert_eq!(
        std::fs::read_to_string(target.state.join("volumes/copy_cache/_data/k")).unwrap(),
        "kept\n"
    );
    // A second import under the same name is refused before anything is read.
    let o = target.berth(
        target.dir.path(),
        &["import", archive.to_str().unwrap(), "-p", "copy"],
    );
    assert!(!o.status.success());
    let q = target.dir.path().join("copy");
    let _down = target.down_on_drop(&q);
    eventually(Duration::from_secs(1), || true);
    target.ok(&q, &["down", "-v", "-t", "0"]);
    env.ok(&p, &["down", "-v", "-t", "0"]);
}
