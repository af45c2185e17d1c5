//! End to end: `berth pull` from a real registry (Debian's `docker-registry`) that the test
//! starts on 127.0.0.1 with its storage in a temporary directory, holding an image the test
//! pushes itself with `skopeo copy`. Skipped (outside CI) when those are not installed.

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

#[path = "support/env.rs"]
mod env;
use env::{Env, eventually, tail};

/// A registry of the test's own, stopped on drop.
struct Registry {
    child: Child,
    addr: String,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        Registry::start_with(dir, None)
    }

    /// With `htpasswd`, the registry asks for basic auth.
    fn start_with(dir: &Path, htpasswd: Option<&Path>) -> Registry {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let cfg = dir.join("registry.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n{}",
                dir.join("data").display(),
                htpasswd.map_or(String::new(), |h| format!(
                    "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                    h.display()
                ))
            ),
        )
        .expect("write config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let up = eventually(Duration::from_secs(10), || {
            std::net::TcpStream::connect(&addr).is_ok()
        });
        assert!(up, "the registry did not start on {addr}");
        Registry { child, addr }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `skopeo copy` of `from` (a transport:path) to `image` in the registry, with `extra` options.
fn push(from: &str, image: &str, extra: &[&str]) {
    let push = Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .args(extra)
        .arg(from)
        .arg(format!("docker://{image}"))
        .output()
        .expect("skopeo");
    assert!(
        push.status.success(),
        "{}",
        String::from_utf8_lossy(&push.stderr)
    );
}

fn have(cmd: &str) -> bool {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok || std::env::var_os("CI").is_none(),
        "CI must install {cmd} (.ci/run)"
    );
    ok
}

/// A registry of the test's own holding `bb:1`, busybox pushed by skopeo; and that reference.
fn registry_with_busybox(env: &Env) -> (Registry, String) {
    let reg = Registry::start(env.dir.path());
    let tar = berth::image::testutil::busybox_docker_save(env.dir.path());
    let image = format!("{}/bb:1", reg.addr);
    push(&format!("docker-archive:{}", tar.display()), &image, &[]);
    (reg, image)
}

/// Root, a registry, skopeo and busybox-static: what every test here needs (CI has them).
fn can_run() -> bool {
    let ok = nix::unistd::Uid::effective().is_root()
        && have("docker-registry")
        && have("skopeo")
        && berth::image::testutil::busybox_available();
    if !ok {
        eprintln!("skipped: needs root, docker-registry, skopeo and busybox-static");
    }
    ok
}

#[test]
fn pull_fetches_once_runs_and_names_what_is_missing() {
    if !can_run() {
        return;
    }
    let env = Env::new();
    let (reg, image) = registry_with_busybox(&env);
    let p = env.project(
        "reg",
        &format!(
            "name: dreg\nservices:\n  app:\n    image: {image}\n    command: [sleep, '300']\n"
        ),
    );
    // `run` makes the project's network: `down` takes it away again.
    let _down = env.down_on_drop(&p);
    // The first pull fetches, the second fetches nothing.
    let out = env.ok(&p, &["pull", &image]);
    assert!(out.contains("2 blob(s) fetched"), "{out}");
    assert_eq!(out.matches("Pull complete").count(), 2, "{out}");
    let out = env.ok(&p, &["pull", &image]);
    assert!(
        out.contains("0 blob(s) fetched") && out.contains("2 already present"),
        "{out}"
    );
    assert_eq!(out.matches("Already exists").count(), 2, "{out}");
    let images = env.ok(&p, &["images"]);
    assert!(images.contains(&format!("{}/bb", reg.addr)), "{images}");
    // It runs.
    let out = env.ok(&p, &["run", "--rm", "app", "echo", "pulled-and-running"]);
    assert!(out.contains("pulled-and-running"), "{out}");
    // By digest.
    let inspect = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{image}"))
        .output()
        .expect("skopeo inspect");
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).expect("inspect JSON");
    let digest = v["Digest"].as_str().expect("digest");
    env.ok(&p, &["pull", &format!("{}/bb@{digest}", reg.addr)]);
    // A tag and an image that do not exist say so.
    let o = env.berth(&p, &["pull", &format!("{}/bb:nope", reg.addr)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("no tag `nope`"),
        "{err}"
    );
    let o = env.berth(&p, &["pull", &format!("{}/nothing:1", reg.addr)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("no image nothing"),
        "{err}"
    );

    // `up` in another state root pulls what it lacks, then runs it.
    let fresh = Env::new();
    let q = fresh.project(
        "reg2",
        &format!(
            "name: dreg2\nservices:\n  app:\n    image: {image}\n    command: [sleep, '300']\n"
        ),
    );
    let _down = fresh.down_on_drop(&q);
    let o = fresh.berth(&q, &["up", "-d"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{}\n{err}", tail(&err));
    assert!(
        err.contains("Pulling") && err.contains("Pulled") && err.contains("Pull complete"),
        "{err}"
    );
    assert_eq!(fresh.container(&q, "dreg2-app-1")["State"], "running");
    fresh.ok(&q, &["down", "-t", "0", "--progress", "quiet"]);

    // On a terminal (forced here: the test's stdout is a pipe), a bar per layer and a total.
    let tty = Env::new();
    let out = tty.ok(&q, &["pull", "--progress", "tty", &image]);
    assert!(
        out.contains("total") && out.contains("B/s") && out.contains("Pull complete"),
        "{out}"
    );
    assert!(out.contains('\u{1b}'), "no terminal drawing: {out}");
}

#[test]
fn a_saved_image_loads_on_a_host_with_no_registry() {
    if !can_run() {
        return;
    }
    let env = Env::new();
    // Pushed gzip-compressed: the saved archive carries the layer as pulled.
    let (_reg, image) = registry_with_busybox(&env);
    let p = env.project("save", "name: dsave\nservices: {}\n");
    env.ok(&p, &["pull", "-q", &image]);
    let out_file = env.dir.path().join("saved.tar");
    let o = env.berth(&p, &["save", "-o", out_file.to_str().unwrap(), &image]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Both readings of the archive: docker-save and OCI layout.
    for transport in ["docker-archive", "oci-archive"] {
        let i = Command::new("skopeo")
            .arg("inspect")
            .arg(format!("{transport}:{}", out_file.display()))
            .output()
            .expect("skopeo inspect");
        assert!(
            i.status.success(),
            "{transport}: {}",
            String::from_utf8_lossy(&i.stderr)
        );
    }
    // Saved twice: the same bytes.
    let again = env.dir.path().join("again.tar");
    env.ok(&p, &["save", "-o", again.to_str().unwrap(), &image]);
    assert_eq!(
        std::fs::read(&out_file).unwrap(),
        std::fs::read(&again).unwrap()
    );
    // Another host (state root): import, and the image runs under its name, with the same id.
    let other = Env::new();
    let q = other.project(
        "save2",
        &format!("name: dsave2\nservices:\n  app:\n    image: {image}\n    pull_policy: never\n    command: [echo, loaded-and-running]\n"),
    );
    let _down = other.down_on_drop(&q);
    other.ok(&q, &["image", "import", out_file.to_str().unwrap()]);
    let ids = |e: &Env, d: &Path| e.ok(d, &["images", "-q"]);
    assert_eq!(ids(&env, &p).trim(), ids(&other, &q).trim());
    let out = other.ok(&q, &["run", "--rm", "app"]);
    assert!(out.contains("loaded-and-running"), "{out}");
    // An image the store lacks: a clear error, and no file left.
    let missing = env.dir.path().join("missing.tar");
    let o = env.berth(&p, &["save", "-o", missing.to_str().unwrap(), "nothing:1"]);
    assert!(!o.status.success());
    assert!(!missing.exists());
    assert!(
        std::fs::read_dir(env.dir.path())
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().contains(".berth-")),
        "a temporary file was left"
    );
}

/// What the test's proxy does to the first response bigger than 300 KiB (a layer).
#[derive(Clone, Copy)]
enum Mischief {
    /// Drops the connection in the middle of it.
    Cut,
    /// Flips one byte of it.
    Flip,
}

/// A TCP proxy of the test's own in front of the registry: returns its address.
fn proxy(to: String, what: Mischief) -> String {
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy listen");
    let addr = l.local_addr().expect("addr").to_string();
    let done = Arc::new(AtomicBool::new(false));
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut down) = c else { continue };
            let Ok(mut up) = std::net::TcpStream::connect(&to) else {
                continue;
            };
            let (mut down2, mut up2) = (
                down.try_clone().expect("clone"),
                up.try_clone().expect("clone"),
            );
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut down2, &mut up2);
                let _ = up2.shutdown(std::net::Shutdown::Write);
            });
            let done = done.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 16 << 10];
                let mut sent = 0usize;
                loop {
                    let n = match up.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if sent + n > 300 << 10 && !done.swap(true, Ordering::SeqCst) {
                        match what {
                            Mischief::Cut => {
                                let _ = down.shutdown(std::net::Shutdown::Both);
                                return;
                            }
                            Mischief::Flip => buf[n / 2] ^= 0xff,
                        }
                    }
                    if down.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    sent += n;
                }
                let _ = down.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

#[test]
fn a_cut_transfer_resumes_and_a_corrupt_blob_is_refused() {
    if !can_run() {
        return;
    }
    let env = Env::new();
    let reg = Registry::start(env.dir.path());
    let tar = berth::image::testutil::busybox_docker_save(env.dir.path());
    push(
        &format!("docker-archive:{}", tar.display()),
        &format!("{}/bb:1", reg.addr),
        &[],
    );
    let p = env.project("cut", "name: dcut\nservices: {}\n");
    // Cut in the middle: resumed, and the image is whole.
    let cut = proxy(reg.addr.clone(), Mischief::Cut);
    let out = env.ok(&p, &["pull", &format!("{cut}/bb:1")]);
    assert!(out.contains("2 blob(s) fetched"), "{out}");
    let images = env.ok(&p, &["images"]);
    assert!(images.contains(&format!("{cut}/bb")), "{images}");
    // One flipped byte: refused, and nothing of it is stored.
    let other = Env::new();
    let q = other.project("flip", "name: dflip\nservices: {}\n");
    let flip = proxy(reg.addr.clone(), Mischief::Flip);
    let o = other.berth(&q, &["pull", &format!("{flip}/bb:1")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("does not match its digest"),
        "{err}"
    );
    let images = other.ok(&q, &["images", "-q"]);
    assert!(
        images.trim().is_empty(),
        "a corrupt pull stored an image: {images}"
    );
    let blobs = other.state.join("images/blobs/sha256");
    let stored = std::fs::read_dir(&blobs).map(|d| d.count()).unwrap_or(0);
    assert_eq!(stored, 0, "blobs of a refused pull were stored");
}

#[test]
fn a_registry_with_basic_auth_needs_berth_login() {
    if !can_run() || !have("htpasswd") {
        return;
    }
    let env = Env::new();
    let hp = env.dir.path().join("htpasswd");
    let h = Command::new("htpasswd")
        .args(["-Bbn", "tester", "s3cret"])
        .output()
        .expect("htpasswd");
    std::fs::write(&hp, &h.stdout).expect("write htpasswd");
    let reg = Registry::start_with(env.dir.path(), Some(&hp));
    let tar = berth::image::testutil::busybox_docker_save(env.dir.path());
    let image = format!("{}/bb:1", reg.addr);
    push(
        &format!("docker-archive:{}", tar.display()),
        &image,
        &["--dest-creds", "tester:s3cret"],
    );
    let p = env.project("auth", "name: dauth\nservices: {}\n");
    // The test's own docker config, never the user's.
    let conf = env.dir.path().join("docker");
    let run = |args: &[&str]| {
        env.command(&p, args)
            .env("DOCKER_CONFIG", &conf)
            .output()
            .expect("berth")
    };
    let o = run(&["pull", &image]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("berth login"), "{err}");
    let o = run(&["login", &reg.addr, "-u", "tester", "--password", "wrong"]);
    assert!(!o.status.success(), "a wrong password logged in");
    let o = run(&["login", &reg.addr, "-u", "tester", "--password", "s3cret"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg = conf.join("config.json");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&cfg)
        .expect("config.json")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "credentials readable by others");
    let o = run(&["pull", &image]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run(&["logout", &reg.addr]);
    assert!(o.status.success());
    let o = run(&["pull", &image]);
    assert!(!o.status.success(), "pulled after logout");
}

#[test]
fn a_two_platform_index_gives_this_hosts_image() {
    if !can_run() {
        return;
    }
    use berth::image::testutil::{self, LayerBuilder, TestImage};
    let env = Env::new();
    let reg = Registry::start(env.dir.path());
    let host = testutil::busybox_image();
    // The other platform's image: a marker file the test can look for.
    let other = TestImage {
        tags: vec![],
        layers: vec![
            LayerBuilder::new()
                .file("wrong-platform", b"x", 0o644)
                .finish(),
        ],
        gzip_layers: false,
        config: serde_json::json!({"Cmd": ["sh"]}),
    };
    let layout = env.dir.path().join("layout");
    testutil::two_platform_layout(&layout, &host, &other, "1");
    let image = format!("{}/multi:1", reg.addr);
    push(&format!("oci:{}:1", layout.display()), &image, &["--all"]);
    let p = env.project(
        "multi",
        &format!(
            "name: dmulti\nservices:\n  app:\n    image: {image}\n    command: [sleep, '300']\n"
        ),
    );
    let _down = env.down_on_drop(&p);
    env.ok(&p, &["pull", &image]);
    let out = env.ok(
        &p,
        &[
            "run",
            "--rm",
            "app",
            "sh",
            "-c",
            "ls /; test ! -e /wrong-platform && echo right-platform",
        ],
    );
    assert!(out.contains("right-platform"), "{out}");
}
