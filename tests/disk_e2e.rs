//! End to end: a service's volumes, bind mounts and tmpfs on the real kernel (root required;
//! CI runs as root). Nothing is left behind: volumes go with `down -v`, mounts with the
//! containers' mount namespaces.

use std::path::Path;

use berth::image::testutil::{self, DockerLayout, LayerBuilder, TestImage};

#[path = "support/env.rs"]
mod env;
use env::{Env, eventually, root};
use std::time::Duration;

/// `sh -c script` in service `svc`: (exit status, stdout + stderr).
fn sh(env: &Env, p: &Path, svc: &str, script: &str) -> (bool, String) {
    let o = env.berth(p, &["exec", svc, "sh", "-c", script]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

#[test]
fn volumes_keep_data_binds_can_be_read_only_and_tmpfs_has_its_size() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let env = Env::new();
    // The image's content at a volume's target fills the volume when it is new.
    let seeded = Path::new("/usr/share/base-files").is_dir();
    let p = env.project(
        "vol",
        &format!(
            "name: dvol\nservices:\n  app:\n    image: host\n    read_only: true\n    command: [sleep, '300']\n    volumes:\n      - data:/data\n      - ./site:/site:ro\n      - /scratch\n{}    tmpfs: ['/cache:size=8m']\nvolumes:\n  data: {{}}\n  base: {{}}\n",
            if seeded { "      - base:/usr/share/base-files\n" } else { "" }
        ),
    );
    let site = p.join("site");
    std::fs::create_dir_all(&site).expect("mkdir");
    std::fs::write(site.join("index.html"), "from the host\n").expect("write");
    let _down = env.down_on_drop(&p);
    env.ok(&p, &["up", "-d", "--progress", "quiet"]);
    let (ok, out) = sh(
        &env,
        &p,
        "app",
        "echo kept > /data/f && echo anon > /scratch/f && cat /site/index.html",
    );
    assert!(ok, "{out}");
    assert!(out.contains("from the host"), "{out}");
    // The read-only root stays read-only, the bind is read-only, the volumes are writable.
    let (ok, out) = sh(&env, &p, "app", "touch /etc/nope");
    assert!(!ok && out.contains("Read-only"), "{out}");
    let (ok, out) = sh(&env, &p, "app", "touch /site/nope");
    assert!(!ok && out.contains("Read-only"), "{out}");
    assert!(!site.join("nope").exists());
    // tmpfs: its size, as the kernel reports it.
    let (ok, out) = sh(&env, &p, "app", "df -k /cache | tail -1");
    assert!(ok, "{out}");
    assert_eq!(out.split_whitespace().nth(1), Some("8192"), "{out}");
    if seeded {
        let (ok, out) = sh(&env, &p, "app", "ls /usr/share/base-files");
        assert!(
            ok && !out.trim().is_empty(),
            "the volume was not filled: {out}"
        );
    }
    // The data is on the host, in the volume; it outlives `down`.
    let data = env.state.join("volumes/dvol_data/_data/f");
    assert_eq!(
        std::fs::read_to_string(&data).expect("volume file"),
        "kept\n"
    );
    env.ok(&p, &["down", "-t", "0", "--progress", "quiet"]);
    assert!(data.exists(), "down removed a named volume");
    env.ok(&p, &["up", "-d", "--progress", "quiet"]);
    let (ok, out) = sh(&env, &p, "app", "cat /data/f /scratch/f");
    assert!(ok && out.contains("kept") && out.contains("anon"), "{out}");
    // `down -v` removes the project's volumes, anonymous ones too.
    env.ok(&p, &["down", "-v", "-t", "0", "--progress", "quiet"]);
    let left: Vec<_> = std::fs::read_dir(env.state.join("volumes"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "volumes left after down -v: {left:?}");
}

#[test]
fn a_symlink_in_the_image_cannot_aim_a_mount_at_the_host() {
    if !root() || !testutil::busybox_available() {
        eprintln!("skipped: needs root and busybox-static");
        return;
    }
    let env = Env::new();
    // Two links out of the image: one absolute, one climbing with `..`. Resolved on the host
    // they would land in this directory.
    let bait = env.dir.path().join("bait");
    std::fs::create_dir_all(&bait).expect("mkdir");
    let bait_s = bait.to_string_lossy().into_owned();
    let up = "../".repeat(12) + bait_s.trim_start_matches('/');
    let evil = TestImage {
        tags: vec!["evil:1".into()],
        layers: vec![
            testutil::busybox_layer(),
            LayerBuilder::new()
                .symlink("abs", &bait_s)
                .symlink("rel", &up)
                .finish(),
        ],
        gzip_layers: false,
        config: serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["sh"]}),
    };
    let tar = env.dir.path().join("evil.tar");
    testutil::docker_save(&tar, &[evil], DockerLayout::Legacy, false);
    let p = env.project(
        "evil",
        "name: devil\nservices:\n  x:\n    image: evil:1\n    command: [sleep, '300']\n    volumes:\n      - ./src:/abs/a\n      - ./src:/rel/b\n      - type: tmpfs\n        target: /abs/t\n",
    );
    env.ok(&p, &["image", "import", &tar.to_string_lossy()]);
    std::fs::create_dir_all(p.join("src")).expect("mkdir");
    std::fs::write(p.join("src/marker"), "m").expect("write");
    let _down = env.down_on_drop(&p);
    env.ok(&p, &["up", "-d", "--progress", "quiet"]);
    // Inside, the links resolve within the container's own root, where the mounts are.
    let inside = format!("{bait_s}/a/marker");
    let (ok, out) = sh(&env, &p, "x", &format!("cat {inside} && ls {bait_s}"));
    assert!(ok, "{out}");
    // Nothing was made or mounted in the host's directory.
    let on_host: Vec<_> = std::fs::read_dir(&bait)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        on_host.is_empty(),
        "mount targets escaped to the host: {on_host:?}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(&bait_s), "a mount landed on the host");
    env.ok(&p, &["down", "-t", "0", "--progress", "quiet"]);
}

/// The loop devices whose backing file is under `dir` (from sysfs).
fn loops_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file"))
            && b.trim().starts_with(&*dir.to_string_lossy())
        {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out
}

#[test]
fn a_private_disk_keeps_its_data_holds_its_size_and_grows() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let env = Env::new();
    let yaml = |size: &str| {
        format!(
            "name: dpriv\nservices:\n  db:\n    image: host\n    restart: always\n    command: [sleep, '300']\n    disks: ['pg:/var/lib/pg']\ndisks:\n  pg:\n    size: {size}\n"
        )
    };
    let p = env.project("priv", &yaml("64m"));
    let _down = env.down_on_drop(&p);
    env.ok(&p, &["up", "-d", "--progress", "quiet"]);
    let (ok, out) = sh(&env, &p, "db", "echo precious > /var/lib/pg/f && sync");
    assert!(ok, "{out}");
    let img = env.state.join("disks/dpriv_pg/disk.img");
    assert!(img.is_file());
    // 64 MiB holds no 65th MiB.
    let (ok, out) = sh(
        &env,
        &p,
        "db",
        "dd if=/dev/zero of=/var/lib/pg/big bs=1M count=65",
    );
    assert!(!ok && out.contains("No space left"), "{out}");
    let (ok, out) = sh(&env, &p, "db", "rm /var/lib/pg/big && cat /var/lib/pg/f");
    assert!(ok && out.contains("precious"), "{out}");
    // A restart, then kill -9 of the container's process (the supervisor brings it back).
    env.ok(&p, &["restart", "db"]);
    let (ok, out) = sh(&env, &p, "db", "cat /var/lib/pg/f");
    assert!(ok && out.contains("precious"), "after restart: {out}");
    let pid = env.container(&p, "dpriv-db-1")["Pid"]
        .as_i64()
        .expect("pid") as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    assert!(
        env::eventually(std::time::Duration::from_secs(15), || {
            let c = env.container(&p, "dpriv-db-1");
            c["State"] == "running" && c["Pid"].as_i64() != Some(i64::from(pid))
        }),
        "not restarted after kill -9: {}",
        env.supervisor_log("dpriv")
    );
    let (ok, out) = sh(&env, &p, "db", "cat /var/lib/pg/f");
    assert!(ok && out.contains("precious"), "after kill -9: {out}");
    // down + up.
    env.ok(&p, &["down", "-t", "0", "--progress", "quiet"]);
    assert!(img.is_file(), "down removed the disk");
    assert!(
        loops_under(&env.state).is_empty(),
        "a loop device is left after down"
    );
    env.ok(&p, &["up", "-d", "--progress", "quiet"]);
    let (ok, out) = sh(&env, &p, "db", "cat /var/lib/pg/f");
    assert!(ok && out.contains("precious"), "after down + up: {out}");
    // Growing keeps the data; shrinking is refused and changes nothing.
    std::fs::write(p.join("berth.yaml"), yaml("128m")).expect("write");
    env.ok(&p, &["up", "-d", "--progress", "quiet"]);
    let (ok, out) = sh(
        &env,
        &p,
        "db",
        "cat /var/lib/pg/f; df -k /var/lib/pg | tail -1",
    );
    assert!(ok && out.contains("precious"), "after growing: {out}");
    let kib: u64 = out
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(kib > 100 * 1024, "the file system did not grow: {out}");
    let before = env.container(&p, "dpriv-db-1")["Pid"].clone();
    std::fs::write(p.join("berth.yaml"), yaml("32m")).expect("write");
    let o = env.berth(&p, &["up", "-d", "--progress", "quiet"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("shrinking a private disk is refused"),
        "{err}"
    );
    // The supervisor sees the same edit, and refuses it the same way: the last good version
    // keeps running (it used to remove the container, then fail to make the new one).
    let status = env.state.join("projects/dpriv/status.json");
    assert!(
        eventually(Duration::from_secs(5), || std::fs::read_to_string(&status)
            .is_ok_and(|t| t.contains("shrinking a private disk is refused"))),
        "the supervisor did not refuse the edit: {}",
        env.supervisor_log("dpriv")
    );
    assert_eq!(
        env.container(&p, "dpriv-db-1")["Pid"],
        before,
        "a refused shrink changed the container"
    );
    // down -v takes the disk with it, and no loop device stays.
    env.ok(&p, &["down", "-v", "-t", "0", "--progress", "quiet"]);
    assert!(!img.exists(), "down -v left the disk");
    assert!(loops_under(&env.state).is_empty(), "a loop device is left");
}

#[test]
fn a_shared_disk_gives_each_container_the_baseline_and_its_own_throwaway_changes() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let env = Env::new();
    let p = env.project(
        "shared",
        "name: dshared\nservices:\n  one:\n    image: host\n    command: [sleep, '300']\n    disks: ['assets:/srv']\n  two:\n    image: host\n    command: [sleep, '300']\n    disks: ['assets:/srv:ro']\ndisks:\n  assets:\n    kind: shared\n    source: ./seed\n    size: 16m\n",
    );
    std::fs::create_dir_all(p.join("seed/sub")).expect("mkdir");
    std::fs::write(p.join("seed/a.txt"), "baseline\n").expect("write");
    std::fs::write(p.join("seed/sub/b"), "deep\n").expect("write");
    let _down = env.down_on_drop(&p);
    env.ok(&p, &["up", "-d", "--progress", "quiet"]);
    for svc in ["one", "two"] {
        let (ok, out) = sh(&env, &p, svc, "cat /srv/a.txt /srv/sub/b");
        assert!(
            ok && out.contains("baseline") && out.contains("deep"),
            "{svc}: {out}"
        );
    }
    // One's writes are its own: not the other's, not the baseline's, not the seed's.
    let (ok, out) = sh(
        &env,
        &p,
        "one",
        "echo mine > /srv/new && echo edited > /srv/a.txt && cat /srv/a.txt",
    );
    assert!(ok && out.contains("edited"), "{out}");
    let (ok, out) = sh(&env, &p, "two", "cat /srv/a.txt; ls /srv");
    assert!(
        ok && out.contains("baseline") && !out.contains("new"),
        "{out}"
    );
    let (ok, out) = sh(&env, &p, "two", "echo x > /srv/x");
    assert!(
        !ok && out.contains("Read-only"),
        "a read-only mount took a write: {out}"
    );
    assert_eq!(
        std::fs::read_to_string(p.join("seed/a.txt")).expect("seed"),
        "baseline\n"
    );
    let bases: Vec<_> = std::fs::read_dir(env.state.join("disks/dshared_assets"))
        .expect("disk dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("base-"))
        .collect();
    assert_eq!(bases.len(), 1);
    let base = bases[0].path();
    assert_eq!(
        std::fs::read_to_string(base.join("a.txt")).expect("baseline"),
        "baseline\n"
    );
    assert!(!base.join("new").exists(), "the baseline was written");
    // A restart throws the changes away.
    env.ok(&p, &["restart", "one"]);
    let (ok, out) = sh(&env, &p, "one", "cat /srv/a.txt; ls /srv");
    assert!(
        ok && out.contains("baseline") && !out.contains("new"),
        "after restart: {out}"
    );
    // An edited seed is a new baseline, and the containers using it are made again with it.
    std::fs::write(p.join("seed/a.txt"), "second\n").expect("write");
    env.ok(&p, &["up", "-d", "--progress", "quiet"]);
    let (ok, out) = sh(&env, &p, "two", "cat /srv/a.txt");
    assert!(
        ok && out.contains("second"),
        "after the seed changed: {out}"
    );
    // `berth disk update` takes the seed again and makes its users anew.
    let before = env.container(&p, "dshared-one-1")["Pid"].clone();
    env.ok(&p, &["disk", "update", "assets"]);
    assert_ne!(
        env.container(&p, "dshared-one-1")["Pid"],
        before,
        "disk update recreated nothing"
    );
    env.ok(&p, &["down", "-v", "-t", "0", "--progress", "quiet"]);
    assert!(
        !env.state.join("disks/dshared_assets").exists(),
        "down -v left the shared disk"
    );
}

#[test]
fn storage_opt_size_limits_the_writable_layer() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let env = Env::new();
    let p = env.project(
        "sized",
        "name: dsized\nservices:\n  app:\n    image: host\n    command: [sleep, '300']\n    storage_opt: {size: 32m}\n",
    );
    let _down = env.down_on_drop(&p);
    env.ok(&p, &["up", "-d", "--progress", "quiet"]);
    let (ok, out) = sh(&env, &p, "app", "dd if=/dev/zero of=/big bs=1M count=40");
    assert!(
        !ok && out.contains("No space left"),
        "40 MB fit in a 32m layer: {out}"
    );
    // The host holds no more than the limit for it.
    let dir = env.state.join("containers/dsized-app-1");
    let used = berth::disk::tree_usage(&dir);
    assert!(
        used <= 33 << 20,
        "the host took {used} bytes for a 32m layer"
    );
    // The layer survives a restart, as a writable layer does.
    let (ok, out) = sh(&env, &p, "app", "rm /big && echo kept > /keep");
    assert!(ok, "{out}");
    env.ok(&p, &["restart", "app"]);
    let (ok, out) = sh(&env, &p, "app", "cat /keep");
    assert!(ok && out.contains("kept"), "{out}");
    env.ok(&p, &["down", "-t", "0", "--progress", "quiet"]);
    assert!(loops_under(&env.state).is_empty(), "a loop device is left");
}

#[test]
fn a_secret_is_a_read_only_file_with_its_owner_and_mode_and_nowhere_else() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let env = Env::new();
    let p = env.project(
        "secret",
        "name: dsecret\nservices:\n  app:\n    image: host\n    command: [sleep, '300']\n    secrets:\n      - source: token\n        uid: '1000'\n        gid: '1001'\n        mode: 0440\n      - inline\n    configs:\n      - source: conf\n        target: /etc/app.conf\nsecrets:\n  token:\n    file: ./token.txt\n  inline:\n    content: inline-value\nconfigs:\n  conf:\n    content: \"level: debug\\n\"\n",
    );
    std::fs::write(p.join("token.txt"), "s3cr3t-value\n").expect("write");
    let _down = env.down_on_drop(&p);
    env.ok(&p, &["up", "-d", "--progress", "quiet"]);
    let (ok, out) = sh(
        &env,
        &p,
        "app",
        "cat /run/secrets/token; stat -c '%u %g %a' /run/secrets/token; cat /run/secrets/inline; cat /etc/app.conf",
    );
    assert!(ok, "{out}");
    assert!(out.contains("s3cr3t-value"), "{out}");
    assert!(out.contains("1000 1001 440"), "owner and mode: {out}");
    assert!(
        out.contains("inline-value") && out.contains("level: debug"),
        "{out}"
    );
    let (ok, out) = sh(&env, &p, "app", "echo x > /run/secrets/token");
    assert!(
        !ok && out.contains("Read-only"),
        "a secret took a write: {out}"
    );
    // Not in the environment, not in `berth config`.
    let (_, envs) = sh(&env, &p, "app", "env; cat /proc/1/environ | tr '\\0' '\\n'");
    assert!(
        !envs.contains("s3cr3t"),
        "the secret is in the environment: {envs}"
    );
    let config = env.ok(&p, &["config"]);
    assert!(
        !config.contains("s3cr3t"),
        "the secret is in berth config: {config}"
    );
    // A changed secret file recreates the service that uses it.
    std::fs::write(p.join("token.txt"), "rotated\n").expect("write");
    env.ok(&p, &["up", "-d", "--progress", "quiet"]);
    let (ok, out) = sh(&env, &p, "app", "cat /run/secrets/token");
    assert!(ok && out.contains("rotated"), "{out}");
    env.ok(&p, &["down", "-t", "0", "--progress", "quiet"]);
}

#[test]
fn an_image_volume_becomes_an_anonymous_volume_filled_from_the_image() {
    if !root() || !testutil::busybox_available() {
        eprintln!("skipped: needs root and busybox-static");
        return;
    }
    let env = Env::new();
    let img = TestImage {
        tags: vec!["withvol:1".into()],
        layers: vec![
            testutil::busybox_layer(),
            LayerBuilder::new()
                .dir("data", 0o755)
                .file("data/seed", b"from the image\n", 0o644)
                .finish(),
        ],
        gzip_layers: false,
        config: serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["sh"], "Volumes": {"/data": {}}}),
    };
    let tar = env.dir.path().join("withvol.tar");
    testutil::docker_save(&tar, &[img], DockerLayout::Legacy, false);
    let p = env.project(
        "imgvol",
        "name: dimgvol\nservices:\n  x:\n    image: withvol:1\n    command: [sleep, '300']\n",
    );
    env.ok(&p, &["image", "import", &tar.to_string_lossy()]);
    let _down = env.down_on_drop(&p);
    env.ok(&p, &["up", "-d", "--progress", "quiet"]);
    let (ok, out) = sh(&env, &p, "x", "cat /data/seed && echo more > /data/more");
    assert!(ok && out.contains("from the image"), "{out}");
    env.ok(&p, &["up", "-d", "--force-recreate", "--progress", "quiet"]);
    let (ok, out) = sh(&env, &p, "x", "cat /data/more");
    assert!(
        ok && out.contains("more"),
        "the image volume was not kept: {out}"
    );
    env.ok(&p, &["down", "-v", "-t", "0", "--progress", "quiet"]);
    let left: Vec<_> = std::fs::read_dir(env.state.join("volumes"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "volumes left after down -v: {left:?}");
}
