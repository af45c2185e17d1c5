//! End to end: `berth build` and `up` of services with `build:`, on a busybox base image the
//! test imports itself. Root: each RUN step is a container.

use std::path::Path;
use std::time::Duration;

#[path = "support/env.rs"]
mod env;
use env::{Env, eventually, tail};

fn skip() -> bool {
    if !nix::unistd::Uid::effective().is_root() || !berth::image::testutil::busybox_available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root with busybox-static"
        );
        eprintln!("skipped: needs root and busybox-static");
        return true;
    }
    false
}

const DOCKERFILE: &str = "\
FROM busybox AS builder
WORKDIR /work
COPY gen.sh .
RUN sh gen.sh > /work/out.txt
FROM busybox
COPY --from=builder /work/out.txt /app/out.txt
COPY data/ /app/data/
USER 1000:1000
WORKDIR /app
HEALTHCHECK --interval=1s --retries=30 CMD test -f /app/out.txt
ENTRYPOINT [\"/bin/sh\", \"-c\"]
CMD [\"cat /app/out.txt; echo uid=$(id -u); echo pwd=$(pwd); ls /app/data; sleep 300\"]
";

fn steps(err: &str, what: &str) -> usize {
    err.lines()
        .filter(|l| l.starts_with('#') && l.ends_with(what) || l.contains(&format!(" {what} ")))
        .count()
}

/// The lines `#N DONE ...`: the steps that ran.
fn ran(err: &str) -> Vec<String> {
    err.lines()
        .filter(|l| l.starts_with('#') && l.contains(" DONE "))
        .map(str::to_string)
        .collect()
}

/// Imports the busybox image the tests build from into `env`'s store.
fn import_busybox(env: &Env, p: &Path) {
    let tar = berth::image::testutil::busybox_docker_save(env.dir.path());
    env.ok(p, &["image", "import", tar.to_str().unwrap()]);
}

/// A project directory `dir` with this berth.yaml and Dockerfile, and busybox in the store.
fn dockerfile_project(env: &Env, dir: &str, yaml: &str, dockerfile: &str) -> std::path::PathBuf {
    let p = env.project(dir, yaml);
    std::fs::write(p.join("Dockerfile"), dockerfile).unwrap();
    import_busybox(env, &p);
    p
}

fn no_mounts_under(dir: &Path) -> bool {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    !mi.contains(&dir.display().to_string())
}

#[test]
fn a_multi_stage_build_runs_with_its_settings_and_rebuilds_from_the_cache() {
    if skip() {
        return;
    }
    let env = Env::new();
    let p = env.project(
        "build",
        "name: dbuild\nservices:\n  app:\n    build: .\n    network_mode: none\n",
    );
    std::fs::write(p.join("Dockerfile"), DOCKERFILE).unwrap();
    std::fs::write(p.join("gen.sh"), "echo generated-by-the-builder-stage\n").unwrap();
    std::fs::create_dir_all(p.join("data")).unwrap();
    std::fs::write(p.join("data/kept.txt"), "one").unwrap();
    std::fs::write(p.join("data/ignored.txt"), "secret").unwrap();
    std::fs::write(p.join(".dockerignore"), "data/ignored.txt\n").unwrap();
    import_busybox(&env, &p);
    let _down = env.down_on_drop(&p);

    let o = env.berth(&p, &["build", "--progress", "plain"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{}\n{err}", tail(&err));
    // WORKDIR /work, COPY gen.sh, RUN, COPY --from, COPY data/, WORKDIR /app: six steps that
    // make layers (WORKDIR creates its directory, as Docker's).
    assert_eq!(ran(&err).len(), 6, "{err}");
    let images = env.ok(&p, &["images"]);
    assert!(images.contains("dbuild-app"), "{images}");

    // It runs with the image's settings.
    env.ok(&p, &["up", "-d"]);
    let healthy = eventually(Duration::from_secs(20), || {
        env.container(&p, "dbuild-app-1")["Health"] == "healthy"
    });
    let logs = env.ok(&p, &["logs", "app"]);
    assert!(healthy, "{:?}\n{logs}", env.ps(&p));
    assert!(logs.contains("generated-by-the-builder-stage"), "{logs}");
    assert!(logs.contains("uid=1000"), "{logs}");
    assert!(logs.contains("pwd=/app"), "{logs}");
    assert!(logs.contains("kept.txt"), "{logs}");
    assert!(
        !logs.contains("ignored.txt"),
        "a .dockerignored file reached the image: {logs}"
    );

    // Nothing changed: no step runs.
    let o = env.berth(&p, &["build", "--progress", "plain"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{}\n{err}", tail(&err));
    assert!(ran(&err).is_empty(), "{err}");
    assert_eq!(steps(&err, "CACHED"), 6, "{err}");

    // One copied file changed: the steps from that COPY on run, the builder stage does not.
    std::fs::write(p.join("data/kept.txt"), "two").unwrap();
    // An ignored file changing changes nothing.
    std::fs::write(p.join("data/ignored.txt"), "changed").unwrap();
    let o = env.berth(&p, &["build", "--progress", "plain"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{}\n{err}", tail(&err));
    let r = ran(&err);
    // COPY data/ (step 7) and the WORKDIR after it (step 9); the builder stage is cached.
    assert_eq!(r.len(), 2, "{err}");
    assert!(r[0].starts_with("#7 ") && r[1].starts_with("#9 "), "{err}");

    // `up` builds a built service's image when the store lacks it.
    env.ok(&p, &["down", "-t", "0", "--progress", "quiet"]);
    env.ok(&p, &["rmi", "dbuild-app"]);
    let o = env.berth(&p, &["up", "-d", "--progress", "plain"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success() && err.contains("Building app"), "{err}");
    assert_eq!(env.container(&p, "dbuild-app-1")["State"], "running");

    env.ok(&p, &["down", "-t", "0", "--progress", "quiet"]);
    assert!(no_mounts_under(&env.state), "a build left a mount behind");
    let leftover = std::fs::read_dir(env.state.join("build/tmp"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(leftover, 0, "the build left its scratch directory");
}

#[test]
fn a_failing_run_names_its_line_and_leaves_no_image() {
    if skip() {
        return;
    }
    let env = Env::new();
    let p = env.project(
        "buildfail",
        "name: dbuildfail\nservices:\n  bad:\n    build:\n      context: .\n      dockerfile: Dockerfile.bad\n",
    );
    std::fs::write(
        p.join("Dockerfile.bad"),
        "FROM busybox\n# a comment\nRUN echo about-to-fail && \\\n    exit 3\nCMD [\"true\"]\n",
    )
    .unwrap();
    import_busybox(&env, &p);
    let o = env.berth(&p, &["build", "--progress", "plain"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("Dockerfile.bad:3:"), "{err}");
    assert!(err.contains("exited with status 3"), "{err}");
    assert!(err.contains("about-to-fail"), "{err}");
    assert!(err.contains("exit 3"), "{err}");
    let images = env.ok(&p, &["images"]);
    assert!(!images.contains("dbuildfail-bad"), "{images}");
    // Its container is gone, and nothing is mounted.
    assert!(env.ps(&p).is_empty());
    assert!(no_mounts_under(&env.state));

    // A parse error names the line too, and builds nothing.
    std::fs::write(p.join("Dockerfile.bad"), "FROM busybox\nCOPPY a b\n").unwrap();
    let o = env.berth(&p, &["build"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        err.contains("Dockerfile.bad:2: unknown instruction `COPPY` (did you mean COPY?)"),
        "{err}"
    );
}

#[test]
fn develop_watch_syncs_files_and_rebuilds_one_service() {
    if skip() {
        return;
    }
    let env = Env::new();
    let p = env.project(
        "watch",
        "name: dwatch\nservices:\n  app:\n    build: .\n    network_mode: none\n    develop:\n      watch:\n        - action: sync\n          path: ./src\n          target: /app/src\n          ignore: ['*.tmp']\n        - action: rebuild\n          path: ./Dockerfile\n  other:\n    image: busybox\n    network_mode: none\n    command: [sleep, '300']\n",
    );
    std::fs::write(
        p.join("Dockerfile"),
        "FROM busybox\nCOPY src/ /app/src/\nCMD [\"sleep\", \"300\"]\n",
    )
    .unwrap();
    std::fs::create_dir_all(p.join("src")).unwrap();
    std::fs::write(p.join("src/first.txt"), "first").unwrap();
    import_busybox(&env, &p);
    let _down = env.down_on_drop(&p);
    let mut watch = env
        .command(&p, &["watch"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("berth watch");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stderr = watch.stderr.take().unwrap();
    let mut watch = Kill(watch);
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let l2 = log.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let mut g = l2.lock().unwrap();
            g.push_str(&line);
            g.push('\n');
        }
    });
    let watching = eventually(Duration::from_secs(30), || {
        log.lock().unwrap().contains("berth watch: watching")
    });
    assert!(watching, "{}", log.lock().unwrap());
    let pid = |c: &str| env.container(&p, c)["Pid"].clone();
    let (app_pid, other_pid) = (pid("dwatch-app-1"), pid("dwatch-other-1"));
    assert!(app_pid.is_number(), "{:?}", env.ps(&p));

    // sync: a new file shows up in the container within a second.
    let t0 = std::time::Instant::now();
    std::fs::write(p.join("src/new.txt"), "synced-from-the-host").unwrap();
    let synced = eventually(Duration::from_secs(1), || {
        let o = env.berth(&p, &["exec", "-T", "app", "cat", "/app/src/new.txt"]);
        String::from_utf8_lossy(&o.stdout).contains("synced-from-the-host")
    });
    assert!(
        synced,
        "not synced within 1 s ({:?}): {}",
        t0.elapsed(),
        log.lock().unwrap()
    );
    // An ignored file is not synced.
    std::fs::write(p.join("src/scratch.tmp"), "x").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let o = env.berth(&p, &["exec", "-T", "app", "ls", "/app/src"]);
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("scratch.tmp"),
        "{}",
        log.lock().unwrap()
    );
    assert_eq!(pid("dwatch-app-1"), app_pid, "a sync recreated the service");

    // rebuild: the service is rebuilt and recreated, the other one untouched.
    std::fs::write(
        p.join("Dockerfile"),
        "FROM busybox\nCOPY src/ /app/src/\nENV MARK=rebuilt\nCMD [\"sleep\", \"300\"]\n",
    )
    .unwrap();
    let rebuilt = eventually(Duration::from_secs(30), || {
        let o = env.berth(&p, &["exec", "-T", "app", "env"]);
        String::from_utf8_lossy(&o.stdout).contains("MARK=rebuilt")
    });
    assert!(rebuilt, "{}", log.lock().unwrap());
    assert_ne!(pid("dwatch-app-1"), app_pid);
    assert_eq!(
        pid("dwatch-other-1"),
        other_pid,
        "the other service was touched"
    );
    let _ = watch.0.kill();
    let _ = watch.0.wait();
    env.ok(&p, &["down", "-t", "0", "--progress", "quiet"]);
    assert!(no_mounts_under(&env.state));
}

#[test]
fn add_unpacks_a_local_archive_and_predefined_args_are_set() {
    if skip() {
        return;
    }
    let env = Env::new();
    let p = env.project(
        "buildadd",
        "name: dbuildadd\nservices:\n  app:\n    build: .\n    network_mode: none\n",
    );
    // A gzip tarball with a directory, a file and a symlink.
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    b.append_data(&mut h, "pkg/", std::io::empty()).unwrap();
    let body = b"hello from the archive\n";
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o640);
    h.set_size(body.len() as u64);
    b.append_data(&mut h, "pkg/hello.txt", &body[..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "pkg/link", "hello.txt").unwrap();
    let gz = b.into_inner().unwrap().finish().unwrap();
    std::fs::write(p.join("bundle.tar.gz"), gz).unwrap();
    std::fs::write(
        p.join("Dockerfile"),
        "FROM busybox\nARG TARGETARCH\nADD bundle.tar.gz /opt/\nWORKDIR /srv/new\nCOPY . .\nRUN cat /opt/pkg/link && stat -c %a /opt/pkg/hello.txt && echo arch=$TARGETARCH && pwd && ls /srv/new\n",
    )
    .unwrap();
    import_busybox(&env, &p);
    let o = env.berth(&p, &["build", "--progress", "plain"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{}\n{err}", tail(&err));
    assert!(err.contains("hello from the archive"), "{err}");
    assert!(err.contains("640"), "{err}");
    assert!(
        err.contains("arch=amd64") || err.contains("arch=arm64"),
        "{err}"
    );
    // WORKDIR made its directory (RUN ran in it); `COPY . .` copied the context there.
    assert!(
        err.contains("/srv/new") && err.contains("bundle.tar.gz"),
        "{err}"
    );
}

#[test]
fn run_steps_get_the_builds_extra_hosts_and_shm_size() {
    if skip() {
        return;
    }
    let env = Env::new();
    // Each RUN fails the build unless its container has what the build key asks for.
    let p = dockerfile_project(
        &env,
        "buildhosts",
        "name: dbhosts\nservices:\n  app:\n    build:\n      context: .\n      extra_hosts: ['mirror.lan=10.1.2.3', 'other.lan:10.9.9.9']\n      shm_size: 32m\n",
        "FROM busybox\nVOLUME /data\nRUN grep -E '^10.1.2.3\\s+mirror.lan$' /etc/hosts && grep -q other.lan /etc/hosts && echo x > /data/f\nRUN test \"$(df -k /dev/shm | awk 'NR==2 {print $2}')\" = 32768\nCMD [\"true\"]\n",
    );
    let o = env.berth(&p, &["build", "--progress", "plain"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{}\n{err}", tail(&err));
    assert_eq!(ran(&err).len(), 2, "{err}");
    assert!(no_mounts_under(&env.state));
    // The anonymous volumes the image's VOLUME gave each RUN are gone with their containers.
    let left: Vec<_> = std::fs::read_dir(env.state.join("volumes"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    assert!(env.ps(&p).is_empty());
}

#[test]
fn an_image_built_from_host_runs_its_layers_over_the_hosts_files() {
    if skip() {
        return;
    }
    let env = Env::new();
    let p = env.project(
        "fromhost",
        "name: dfromhost\nservices:\n  app:\n    build: .\n    network_mode: none\n",
    );
    // A file the host has, deleted by the build: the image hides it, the host keeps it.
    let victim = ["/etc/issue", "/etc/debian_version", "/etc/os-release"]
        .into_iter()
        .find(|f| Path::new(f).is_file())
        .expect("a host file to delete");
    std::fs::write(p.join("hello.txt"), "copied\n").unwrap();
    // An extended attribute set by a RUN reaches the image's layer (file capabilities travel
    // the same way); set and read with the host's python3 when it has one.
    let py = Path::new("/usr/bin/python3").exists();
    let (xattr_set, xattr_get) = if py {
        (
            "python3 -c 'import os, sys; os.setxattr(sys.argv[1], sys.argv[2], sys.argv[3].encode())' /app/run.txt user.berth kept-xattr",
            "python3 -c 'import os, sys; print(os.getxattr(sys.argv[1], sys.argv[2]).decode())' /app/run.txt user.berth",
        )
    } else {
        ("true", "echo kept-xattr")
    };
    std::fs::write(
        p.join("Dockerfile"),
        format!(
            "FROM host\nRUN mkdir /app && echo from-run > /app/run.txt && echo '#!/bin/sh' > /usr/local/bin/berth-tool && chmod 755 /usr/local/bin/berth-tool && rm {victim} && echo own-gshadow > /etc/gshadow\nRUN {xattr_set}\nCOPY hello.txt /bin/berth-hello\nCOPY --chown=nobody hello.txt /usr/share/berth-hello.txt\nWORKDIR /app\nCMD [\"sh\", \"-c\", \"cat run.txt /usr/share/berth-hello.txt; stat -c %U /usr/share/berth-hello.txt; test -x /usr/local/bin/berth-tool && echo tool; test -e {victim} || echo deleted; {xattr_get}; cat /etc/gshadow; cat /bin/berth-hello; test -x /bin/sh && echo host-sh; cat /etc/shadow 2>/dev/null || echo no-shadow; pwd; sleep 300\"]\n"
        ),
    )
    .unwrap();
    let _down = env.down_on_drop(&p);
    let o = env.berth(&p, &["build", "--progress", "plain"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{}\n{err}", tail(&err));
    // The image holds the build's changes only, not the host's files.
    let size = env.ok(&p, &["image", "inspect", "dfromhost-app"]);
    let v: serde_json::Value = serde_json::from_str(&size).unwrap();
    let v = if v.is_array() { v[0].clone() } else { v };
    assert!(v["Size"].as_u64().unwrap() < 1 << 20, "{v}");
    assert_eq!(v["Config"]["Labels"]["org.berth.base"], "host", "{v}");
    // `history`: one entry per instruction, one non-empty per layer (as `docker history`).
    let id = v["Id"].as_str().unwrap().trim_start_matches("sha256:");
    let cfg: serde_json::Value = serde_json::from_slice(
        &std::fs::read(env.state.join("images/blobs/sha256").join(id)).unwrap(),
    )
    .unwrap();
    let history = cfg["history"].as_array().unwrap();
    let layers = history.iter().filter(|h| h["empty_layer"] != true).count();
    assert_eq!(
        layers,
        cfg["rootfs"]["diff_ids"].as_array().unwrap().len(),
        "{cfg}"
    );
    assert!(
        history.iter().any(|h| h["created_by"]
            .as_str()
            .unwrap()
            .starts_with("COPY --chown=nobody")),
        "{cfg}"
    );
    env.ok(&p, &["up", "-d", "--wait"]);
    let mut logs = String::new();
    let done = eventually(Duration::from_secs(10), || {
        logs = env.ok(&p, &["logs", "--no-color", "app"]);
        logs.contains("/app")
    });
    assert!(done, "{logs}");
    for want in [
        "from-run",
        "copied",
        "nobody",
        "tool",
        "deleted",
        "kept-xattr",
        "own-gshadow",
        "host-sh",
        "no-shadow",
    ] {
        assert!(logs.contains(want), "{want}: {logs}");
    }
    // The host is untouched.
    assert!(Path::new(victim).is_file());
    assert!(!Path::new("/usr/local/bin/berth-tool").exists());
    assert!(!Path::new("/usr/share/berth-hello.txt").exists());
    assert!(!Path::new("/bin/berth-hello").exists());
    // A COPY to /bin on a merged-/usr host went to usr/bin: /bin is still the host's link.
    assert_eq!(logs.matches("copied").count(), 2, "{logs}");
    env.ok(&p, &["down", "-t", "0"]);
    assert!(no_mounts_under(&env.state));
}

#[test]
fn run_mounts_a_cache_kept_between_builds_the_context_and_a_tmpfs() {
    if skip() {
        return;
    }
    let env = Env::new();
    let p = env.project(
        "runmount",
        "name: drunmount\nservices:\n  app:\n    build: .\n    network_mode: none\n",
    );
    std::fs::create_dir_all(p.join("data")).unwrap();
    std::fs::write(p.join("data/in.txt"), "from-the-context\n").unwrap();
    std::fs::write(p.join("data/secret.txt"), "ignored").unwrap();
    std::fs::write(p.join(".dockerignore"), "data/secret.txt\n").unwrap();
    std::fs::write(
        p.join("Dockerfile"),
        "FROM busybox AS gen\n\
         RUN echo generated > /gen.txt && ln -s / /h && echo stage-root > /marker\n\
         FROM busybox\n\
         RUN --mount=type=bind,from=gen,source=/gen.txt,target=/g.txt cat /g.txt > /fromstage\n\
         RUN --mount=type=bind,from=gen,source=h,target=/h cat /h/marker > /via-link\n\
         RUN --mount=type=cache,target=/cache,id=counter --mount=type=tmpfs,target=/scratch \
             echo run >> /cache/log && wc -l < /cache/log > /count && \
             grep -q '/scratch tmpfs' /proc/mounts && touch /scratch/x\n\
         RUN --mount=type=bind,source=data,target=/in cat /in/in.txt > /copied && ! touch /in/no 2>/dev/null && ! test -e /in/secret.txt\n\
         RUN --mount=type=bind,source=data,target=/rw,rw echo scribble > /rw/in.txt && cat /rw/in.txt > /rw.txt\n\
         CMD [\"sh\", \"-c\", \"cat /count /copied /rw.txt /fromstage /via-link; find /cache /in /rw /scratch /h -mindepth 1 | wc -l; test -s /g.txt && echo leaked; sleep 300\"]\n",
    )
    .unwrap();
    import_busybox(&env, &p);
    let _down = env.down_on_drop(&p);
    env.ok(&p, &["build", "--progress", "plain"]);
    // A second build without the layer cache runs the step again: the cache mount kept its file.
    let o = env.berth(&p, &["build", "--no-cache", "--progress", "plain"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    env.ok(&p, &["up", "-d", "--wait"]);
    let mut logs = String::new();
    let enough = eventually(Duration::from_secs(10), || {
        logs = env.ok(&p, &["logs", "--no-color", "app"]);
        logs.lines().count() >= 6
    });
    assert!(enough, "{logs}");
    let lines: Vec<&str> = logs
        .lines()
        .map(|l| l.split(" | ").last().unwrap_or(""))
        .collect();
    assert_eq!(
        lines[0].trim(),
        "2",
        "the cache mount outlived the first build: {logs}"
    );
    assert_eq!(lines[1], "from-the-context", "{logs}");
    assert_eq!(lines[2], "scribble", "{logs}");
    assert_eq!(lines[3], "generated", "a file of another stage: {logs}");
    // A symlink in that stage (`/h -> /`) resolves inside the stage, not on the host.
    assert_eq!(lines[4], "stage-root", "{logs}");
    // Nothing of the mounts is in the image (the mount points may be, empty).
    assert_eq!(lines[5].trim(), "0", "{logs}");
    assert!(!logs.contains("leaked"), "{logs}");
    // A read-write bind wrote to a throw-away layer, not the context.
    assert_eq!(
        std::fs::read_to_string(p.join("data/in.txt")).unwrap(),
        "from-the-context\n"
    );
    // Secrets are refused by name.
    std::fs::write(
        p.join("Dockerfile"),
        "FROM busybox\nRUN --mount=type=secret,id=tok cat /run/secrets/tok\n",
    )
    .unwrap();
    let o = env.berth(&p, &["build"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("Dockerfile:2") && err.contains("not supported yet"),
        "{err}"
    );
    env.ok(&p, &["down", "-t", "0"]);
    assert!(no_mounts_under(&env.state));
}

/// A one-file HTTP server on loopback for as long as the test runs; returns its port.
fn serve(body: &'static [u8]) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            use std::io::{Read, Write};
            let mut s = s;
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(body);
        }
    });
    port
}

#[test]
fn add_fetches_a_url_checked_against_its_checksum() {
    if skip() {
        return;
    }
    let body: &'static [u8] = b"#!/bin/sh\necho fetched-tool\n";
    let port = serve(body);
    let sum = {
        use sha2::Digest;
        let d = sha2::Sha256::digest(body);
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let env = Env::new();
    let p = dockerfile_project(
        &env,
        "addurl",
        "name: daddurl\nservices:\n  app:\n    build: .\n    network_mode: none\n",
        &format!(
            "FROM busybox\nADD --checksum=sha256:{sum} http://127.0.0.1:{port}/dl/tool.sh /opt/\nADD http://127.0.0.1:{port}/x?y=1 /opt/renamed\nCMD [\"sh\", \"-c\", \"stat -c %a /opt/tool.sh; sh /opt/tool.sh; cat /opt/renamed | wc -c; sleep 300\"]\n"
        ),
    );
    let _down = env.down_on_drop(&p);
    env.ok(&p, &["build", "--progress", "plain"]);
    env.ok(&p, &["up", "-d", "--wait"]);
    let mut logs = String::new();
    let done = eventually(Duration::from_secs(10), || {
        logs = env.ok(&p, &["logs", "--no-color", "app"]);
        logs.lines().count() >= 3
    });
    assert!(done, "{logs}");
    assert!(
        logs.contains("| 600"),
        "a fetched file is 0600, as Docker's: {logs}"
    );
    assert!(logs.contains("fetched-tool"), "{logs}");
    assert!(logs.contains(&format!("| {}", body.len())), "{logs}");
    // A wrong checksum refuses the step, with the line.
    std::fs::write(
        p.join("Dockerfile"),
        format!(
            "FROM busybox\nADD --checksum=sha256:{} http://127.0.0.1:{port}/t /t\n",
            "0".repeat(64)
        ),
    )
    .unwrap();
    let o = env.berth(&p, &["build"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("Dockerfile:2") && err.contains("does not match"),
        "{err}"
    );
    env.ok(&p, &["down", "-t", "0"]);
}
