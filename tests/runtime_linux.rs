//! Real containers on the real kernel (root required; CI runs as root). Each test uses its own
//! state directory and cgroup name and removes both.

use std::fs::File;
use std::path::{Path, PathBuf};

use berth::runtime::Inspect;
use berth::runtime::linux::cgroup::Cgroup;
use berth::runtime::linux::launch::{LaunchError, launch, set_setup_exe};
use berth::runtime::linux::spec::{LaunchSpec, Limits, Process, Rootfs};

#[path = "support/env.rs"]
mod env;

fn root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

struct Run {
    code: i32,
    out: String,
}

struct Box {
    dir: tempfile::TempDir,
    cgroup: Option<Cgroup>,
}

impl Drop for Box {
    fn drop(&mut self) {
        if let Some(cg) = &self.cgroup {
            let _ = cg.remove();
        }
    }
}

fn spec(dir: &Path, name: &str, cmd: &str) -> LaunchSpec {
    LaunchSpec {
        name: name.into(),
        hostname: name.into(),
        domainname: None,
        rootfs: Rootfs::Host,
        dir: dir.to_path_buf(),
        read_only: false,
        cgroups: Vec::new(),
        own_network: true,
        netns: None,
        hosts: None,
        resolv: None,
        shm_size: None,
        sysctls: Vec::new(),
        log: None,
        mounts: Vec::new(),
        rw_device: None,
        devices: Vec::new(),
        host_ipc: false,
        host_uts: false,
        process: Process {
            args: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
            env: vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cwd: "/".into(),
            ..Process::default()
        },
    }
}

fn cgroup_name(test: &str) -> String {
    format!("test-{}/{test}", std::process::id())
}

/// Runs one container to completion; returns its exit status and output.
/// The CPU-limit test measures CPU time over wall time, so it runs alone: the other tests hold
/// this lock shared while their containers run, the CPU test holds it exclusively.
static CPU_QUIET: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn run(
    test: &str,
    cmd: &str,
    limits: Option<Limits>,
    tweak: impl FnOnce(&mut LaunchSpec),
) -> (Run, Box) {
    let _shared = CPU_QUIET.read().unwrap_or_else(|e| e.into_inner());
    run_locked(test, cmd, limits, tweak)
}

fn run_locked(
    test: &str,
    cmd: &str,
    limits: Option<Limits>,
    tweak: impl FnOnce(&mut LaunchSpec),
) -> (Run, Box) {
    set_setup_exe(PathBuf::from(env!("CARGO_BIN_EXE_berth")));
    let dir = tempfile::tempdir().expect("tempdir");
    let cgroup = limits.map(|l| Cgroup::create(&cgroup_name(test), &l).expect("cgroup"));
    let mut s = spec(dir.path(), test, cmd);
    if let Some(cg) = &cgroup {
        s.cgroups = cg.paths();
    }
    s.process.default_seccomp().expect("seccomp");
    tweak(&mut s);
    let out_path = dir.path().join("out.log");
    let out = File::create(&out_path).expect("log");
    let err = out.try_clone().expect("log");
    let b = Box { dir, cgroup };
    let running = launch(&s, Some(out), Some(err)).expect("launch");
    let code = running.wait().expect("wait");
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    (Run { code, out }, b)
}

#[test]
fn pid1_is_berth_init_and_namespaces_are_private() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (r, _b) = run(
        "ns",
        "echo pid=$$; cat /proc/1/comm; hostname; ls /proc | grep -c '^[0-9]'; \\
         tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ,; echo; \\
         grep -c berth /proc/self/mountinfo; readlink /proc/self/ns/ipc; exit 7",
        None,
        |_| {},
    );
    assert_eq!(r.code, 7, "{}", r.out);
    let lines: Vec<&str> = r.out.lines().collect();
    assert_eq!(lines[0], "pid=2", "{}", r.out);
    assert_eq!(lines[1], "berth-init");
    assert_eq!(lines[2], "ns");
    // Only init, the shell, and what it runs: a handful of processes, not the host's.
    let procs: u32 = lines[3].trim().parse().expect("count");
    assert!(procs <= 4, "{}", r.out);
    // Its own network namespace holds only the loopback interface.
    assert_eq!(lines[4], "lo,", "{}", r.out);
    // Its mount table is its own: none of the host's mounts (or berth's paths) show.
    assert_eq!(lines[5], "0", "{}", r.out);
    // Its own IPC namespace.
    let host_ipc = std::fs::read_link("/proc/self/ns/ipc").expect("ns");
    assert_ne!(lines[6], host_ipc.to_string_lossy(), "{}", r.out);
}

#[test]
fn host_image_hides_secrets_and_keeps_writes_private() {
    if !root() {
        return;
    }
    let (r, b) = run(
        "hostimg",
        "echo x > /etc/berth-test && cat /etc/berth-test; test -e /etc/shadow && echo shadow-visible; echo home=$(find /root /home -mindepth 1 | wc -l); test -e /etc/os-release && echo os-release",
        None,
        |_| {},
    );
    assert_eq!(r.code, 0, "{}", r.out);
    assert!(r.out.contains("x\n"), "{}", r.out);
    assert!(!r.out.contains("shadow-visible"), "{}", r.out);
    assert!(r.out.contains("os-release"), "{}", r.out);
    assert!(!Path::new("/etc/berth-test").exists());
    // The write landed in this container's upper layer, not the host's /etc.
    assert!(b.dir.path().join("upper/etc/berth-test").exists());
    // The host's /root and /home are not there: empty directories of the container's own.
    assert!(r.out.contains("home=0"), "{}", r.out);
    // A second container does not see the first one's write.
    let (r2, _b2) = run(
        "hostimg2",
        "test -e /etc/berth-test && echo SEEN; echo done",
        None,
        |_| {},
    );
    assert!(!r2.out.contains("SEEN"), "{}", r2.out);
}

#[test]
fn setup_failure_names_the_step() {
    let _shared = CPU_QUIET.read().unwrap_or_else(|e| e.into_inner());
    if !root() {
        return;
    }
    set_setup_exe(PathBuf::from(env!("CARGO_BIN_EXE_berth")));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = spec(dir.path(), "fail", "true");
    s.process.args = vec!["/no/such/program".into()];
    let out = File::create(dir.path().join("o")).expect("f");
    let e = launch(&s, Some(out.try_clone().expect("f")), Some(out));
    match e {
        Err(LaunchError::Setup { source, .. }) => {
            assert_eq!(source.step, "exec service command");
            assert_eq!(source.errno, libc::ENOENT);
        }
        Ok(r) => {
            // The exec failure may be reported after Ready; then the status says 127.
            assert_eq!(r.wait().expect("wait"), 127);
        }
        Err(other) => panic!("{other}"),
    }
}

#[test]
fn memory_and_pids_limits_are_in_the_cgroup() {
    if !root() {
        return;
    }
    let limits = Limits {
        memory: Some(64 << 20),
        pids: Some(50),
        cpus: Some(0.5),
        ..Limits::default()
    };
    let (r, b) = run("limits", "cat /proc/self/cgroup", Some(limits), |_| {});
    assert_eq!(r.code, 0, "{}", r.out);
    let cg = b.cgroup.as_ref().expect("cgroup");
    for (ctrl, d) in &cg.dirs {
        let read = |f: &str| {
            std::fs::read_to_string(d.join(f))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        match (ctrl.as_str(), &cg.version) {
            ("memory", _) => assert_eq!(read("memory.limit_in_bytes"), (64u64 << 20).to_string()),
            ("pids", _) => assert_eq!(read("pids.max"), "50"),
            ("cpu", _) => assert_eq!(read("cpu.cfs_quota_us"), "50000"),
            ("", _) => {
                assert_eq!(read("memory.max"), (64u64 << 20).to_string());
                assert_eq!(read("pids.max"), "50");
                assert_eq!(read("cpu.max"), "50000 100000");
            }
            _ => {}
        }
    }
}

#[test]
fn default_capabilities_no_new_privs_and_no_leaked_fds() {
    if !root() {
        return;
    }
    let (r, _b) = run(
        "caps",
        "grep -E '^(CapEff|CapBnd|CapInh|NoNewPrivs):' /proc/self/status; ls /proc/self/fd | tr '\\n' ' '; echo",
        None,
        |_| {},
    );
    assert_eq!(r.code, 0, "{}", r.out);
    // Docker's default set: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP
    // NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP.
    assert!(r.out.contains("CapEff:\t00000000a80425fb"), "{}", r.out);
    assert!(r.out.contains("CapBnd:\t00000000a80425fb"), "{}", r.out);
    assert!(r.out.contains("CapInh:\t0000000000000000"), "{}", r.out);
    assert!(r.out.contains("NoNewPrivs:\t1"), "{}", r.out);
    // stdin, stdout, stderr, and the directory `ls` itself opened: nothing of berth's.
    let fds = r.out.lines().last().unwrap_or_default().trim().to_string();
    assert_eq!(fds, "0 1 2 3", "{}", r.out);
}

#[test]
fn cap_drop_and_add() {
    if !root() {
        return;
    }
    let (r, _b) = run("capdrop", "grep '^CapEff:' /proc/self/status", None, |s| {
        s.process.cap_drop = vec!["ALL".into()];
        s.process.cap_add = vec!["NET_ADMIN".into()];
    });
    // CAP_NET_ADMIN is bit 12.
    assert!(r.out.contains("CapEff:\t0000000000001000"), "{}", r.out);
}

#[test]
fn seccomp_and_masked_paths_hold() {
    if !root() {
        return;
    }
    let (r, _b) = run(
        "sec",
        "grep '^Seccomp:' /proc/self/status; \
         mount -t tmpfs none /mnt 2>/dev/null && echo MOUNTED; \
         unshare -n true 2>/dev/null && echo UNSHARED; \
         reboot -f 2>/dev/null; echo after-reboot; \
         if [ -e /proc/kcore ]; then wc -c < /proc/kcore; else echo 0; fi; \
         echo 1 > /proc/sys/kernel/domainname 2>/dev/null && echo WROTE-PROC-SYS; \
         cat /proc/keys 2>/dev/null | wc -c",
        None,
        |_| {},
    );
    assert!(r.out.contains("Seccomp:\t2"), "{}", r.out);
    assert!(!r.out.contains("MOUNTED"), "{}", r.out);
    assert!(!r.out.contains("UNSHARED"), "{}", r.out);
    assert!(r.out.contains("after-reboot"), "{}", r.out);
    assert!(!r.out.contains("WROTE-PROC-SYS"), "{}", r.out);
    let lines: Vec<&str> = r.out.lines().collect();
    // /proc/kcore (where the kernel has one) and /proc/keys read as empty (masked).
    assert!(
        lines.iter().filter(|l| l.trim() == "0").count() >= 2,
        "{}",
        r.out
    );
}

#[test]
fn memory_limit_kills_and_is_reported_as_oom() {
    if !root() {
        return;
    }
    let limits = Limits {
        memory: Some(64 << 20),
        memory_swap: Some(64 << 20),
        ..Limits::default()
    };
    // `tail` keeps a line in memory until it ends; /dev/zero has no newline: 200 MB held.
    let (r, b) = run(
        "oom",
        "head -c 200m /dev/zero | tail > /dev/null",
        Some(limits),
        |_| {},
    );
    let cg = b.cgroup.as_ref().expect("cgroup");
    assert!(
        cg.oom_kills() >= 1,
        "no OOM kill recorded; exit {} {}",
        r.code,
        r.out
    );
    // The shell reports its pipeline's last command, killed by SIGKILL.
    assert_eq!(r.code, 137, "{}", r.out);
}

#[test]
fn pids_limit_stops_forks() {
    if !root() {
        return;
    }
    let limits = Limits {
        pids: Some(50),
        ..Limits::default()
    };
    let (r, _b) = run(
        "pids",
        // The forking subshell dies at the first refused fork; the count uses only builtins
        // (a glob), because at the limit nothing else can fork.
        "(for i in $(seq 80); do sleep 5 & done) 2>/dev/null; set -- /proc/[0-9]*; echo started=$#",
        Some(limits),
        |_| {},
    );
    let line = r
        .out
        .lines()
        .find(|l| l.starts_with("started="))
        .unwrap_or_default();
    let n: u32 = line
        .trim_start_matches("started=")
        .trim()
        .parse()
        .unwrap_or(0);
    // init + shell + sleeps: up to the limit (a slot or two may still be held by the
    // subshell that just died), never more.
    assert!((45..=50).contains(&n), "{}", r.out);
}

/// The CPU time a container's cgroup has used, in nanoseconds, on either hierarchy.
fn cpu_used_ns(cg: &Cgroup) -> Option<u64> {
    cg.dirs.iter().find_map(|(c, d)| match c.as_str() {
        "cpuacct" | "cpu" => std::fs::read_to_string(d.join("cpuacct.usage"))
            .ok()?
            .trim()
            .parse()
            .ok(),
        "" => std::fs::read_to_string(d.join("cpu.stat"))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|us| us * 1000),
        _ => None,
    })
}

#[test]
fn cpu_limit_holds_a_busy_loop_near_half_a_core() {
    if !root() {
        return;
    }
    let limits = Limits {
        cpus: Some(0.5),
        ..Limits::default()
    };
    let _alone = CPU_QUIET.write().unwrap_or_else(|e| e.into_inner());
    set_setup_exe(PathBuf::from(env!("CARGO_BIN_EXE_berth")));
    let b = Box {
        dir: tempfile::tempdir().expect("tempdir"),
        cgroup: Some(Cgroup::create(&cgroup_name("cpu"), &limits).expect("cgroup")),
    };
    let (dir, cg) = (&b.dir, b.cgroup.as_ref().expect("cgroup"));
    // The loop says when it has begun; the share is measured over a window inside it, from
    // the host, so the start of the container (slow on an emulated machine) is not counted.
    let mut s = spec(
        dir.path(),
        "cpu",
        "echo go; t=$(($(date +%s%N) + 4000000000)); while [ $(date +%s%N) -lt $t ]; do :; done",
    );
    s.cgroups = cg.paths();
    s.process.default_seccomp().expect("seccomp");
    let out_path = dir.path().join("out.log");
    let out = File::create(&out_path).expect("log");
    let err = out.try_clone().expect("log");
    let running = launch(&s, Some(out), Some(err)).expect("launch");
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&out_path)
        .unwrap_or_default()
        .contains("go")
    {
        assert!(started.elapsed().as_secs() < 60, "the loop never began");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (u1, t1) = (
        cpu_used_ns(cg).expect("cpu usage"),
        std::time::Instant::now(),
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (u2, t2) = (
        cpu_used_ns(cg).expect("cpu usage"),
        std::time::Instant::now(),
    );
    let code = running.wait().expect("wait");
    let log = std::fs::read_to_string(&out_path).unwrap_or_default();
    assert_eq!(code, 0, "{log}");
    let share = (u2 - u1) as f64 / (t2 - t1).as_nanos() as f64;
    // Never above the limit. How far below depends on what else the host runs (a loaded
    // 2-core machine gave the loop 0.27), so the rest is the kernel's own account: the quota
    // written is half a core, and the loop was throttled by it.
    assert!(share <= 0.60, "used {share:.2} of a core");
    let (quota, throttled) = cpu_quota_and_throttled(cg);
    assert_eq!(quota, Some((50_000, 100_000)), "the quota in the cgroup");
    assert!(
        throttled > 0,
        "the loop was never throttled (used {share:.2} of a core)"
    );
}

/// The cgroup's CPU quota and period (µs), and how many periods it was throttled in.
fn cpu_quota_and_throttled(cg: &Cgroup) -> (Option<(i64, u64)>, u64) {
    let throttled = |stat: String| {
        stat.lines()
            .find_map(|l| l.strip_prefix("nr_throttled "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    for (c, d) in &cg.dirs {
        match c.as_str() {
            "" => {
                let max = std::fs::read_to_string(d.join("cpu.max")).unwrap_or_default();
                let mut f = max.split_whitespace();
                let q = f.next().and_then(|q| q.parse().ok());
                let p = f.next().and_then(|p| p.parse().ok());
                let stat = std::fs::read_to_string(d.join("cpu.stat")).unwrap_or_default();
                return (q.zip(p), throttled(stat));
            }
            "cpu" | "cpu,cpuacct" | "cpuacct,cpu" => {
                let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default();
                let q = read("cpu.cfs_quota_us").trim().parse().ok();
                let p = read("cpu.cfs_period_us").trim().parse().ok();
                return (q.zip(p), throttled(read("cpu.stat")));
            }
            _ => {}
        }
    }
    (None, 0)
}

#[test]
fn sigterm_reaches_the_service_and_stubborn_ones_are_killed() {
    let _shared = CPU_QUIET.read().unwrap_or_else(|e| e.into_inner());
    if !root() {
        return;
    }
    use berth::runtime::linux::launch::launch;
    set_setup_exe(PathBuf::from(env!("CARGO_BIN_EXE_berth")));
    let dir = tempfile::tempdir().expect("tempdir");
    let go = |name: &str, cmd: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).expect("dir");
        let mut s = spec(&d, name, cmd);
        s.process.default_seccomp().expect("seccomp");
        let out = File::create(d.join("out")).expect("out");
        let running = launch(&s, Some(out.try_clone().expect("f")), Some(out)).expect("launch");
        std::thread::sleep(std::time::Duration::from_millis(300));
        (running, d)
    };
    let (polite, d) = go(
        "polite",
        "trap 'echo got-term; exit 3' TERM; while :; do sleep 0.1; done",
    );
    let t = std::time::Instant::now();
    let code = polite
        .stop(
            nix::sys::signal::Signal::SIGTERM,
            std::time::Duration::from_secs(5),
        )
        .expect("stop");
    assert_eq!(code, 3);
    assert!(t.elapsed() < env::scaled(std::time::Duration::from_secs(2)));
    assert!(
        std::fs::read_to_string(d.join("out"))
            .unwrap_or_default()
            .contains("got-term")
    );

    let (stubborn, _d) = go("stubborn", "trap '' TERM; while :; do sleep 0.1; done");
    let t = std::time::Instant::now();
    let code = stubborn
        .stop(
            nix::sys::signal::Signal::SIGTERM,
            std::time::Duration::from_millis(500),
        )
        .expect("stop");
    assert_eq!(code, 137);
    assert!(t.elapsed().as_millis() >= 500);
}

#[test]
fn zombies_are_reaped() {
    if !root() {
        return;
    }
    // Orphans (the double-forked sleeps) are re-parented to init, which must reap them.
    let (r, _b) = run(
        "zombies",
        "for i in 1 2 3; do (sleep 0.1 &) ; done; sleep 0.5; grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l",
        None,
        |_| {},
    );
    assert_eq!(r.out.trim(), "0", "{}", r.out);
}

/// Runs one of the runtime's futures to the end on a small tokio runtime of its own.
fn now<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

#[test]
fn runtime_trait_runs_a_busybox_image_from_the_store() {
    let _shared = CPU_QUIET.read().unwrap_or_else(|e| e.into_inner());
    use berth::plan::State;
    use berth::runtime::linux::runtime::LinuxRuntime;
    use berth::runtime::{ContainerSpec, Runtime};
    use berth::spec::model::Service;
    if !root() || !berth::image::testutil::busybox_available() {
        eprintln!("skipped: needs root and busybox-static");
        return;
    }
    set_setup_exe(PathBuf::from(env!("CARGO_BIN_EXE_berth")));
    let state = tempfile::tempdir().expect("state root");
    let rt = LinuxRuntime::new(state.path()).expect("runtime");
    let tar = berth::image::testutil::busybox_docker_save(state.path());
    let imported = rt.images().import(&tar).expect("import");
    let image = format!(
        "{}:{}",
        imported[0].repository.clone().unwrap_or_default(),
        imported[0].tag.clone().unwrap_or_default()
    );
    let project = format!("rt{}", std::process::id());
    // Whatever happens below, the project's containers and cgroups go away.
    struct Cleanup<'a>(&'a LinuxRuntime, String);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            if let Ok(o) = now(self.0.observe(&self.1)) {
                for c in o.containers {
                    let _ = now(self.0.stop(&c.name, std::time::Duration::ZERO));
                    let _ = now(self.0.remove(&c.name));
                }
            }
        }
    }
    let _cleanup = Cleanup(&rt, project.clone());
    let mk = |name: &str, cmd: &[&str]| ContainerSpec {
        project: project.clone(),
        service: name.into(),
        index: 1,
        name: format!("{project}-{name}-1"),
        config_hash: "h1".into(),
        oneoff: false,
        networks: Vec::new(),
        mounts: Vec::new(),
        granted: Vec::new(),
        definition: Service {
            image: Some(image.clone()),
            command: Some(cmd.iter().map(|s| s.to_string()).collect()),
            mem_limit: Some(32 << 20),
            user: Some("nobody".into()),
            ..Service::default()
        },
    };
    let job = mk(
        "job",
        &[
            "sh",
            "-c",
            "id -u; echo hello from busybox; echo dev: $(ls -a /dev | grep -c staging); \
             grep -c ' /etc/hosts ' /proc/self/mountinfo; exit 4",
        ],
    );
    // 32 MiB of memory, 200 MB wanted: the OOM killer ends it, and observe says so.
    let hog = mk("hog", &["sh", "-c", "head -c 200m /dev/zero | tail"]);
    now(rt.create(&hog)).expect("create hog");
    let svc = mk("svc", &["sleep", "30"]);
    now(rt.create(&job)).expect("create job");
    now(rt.create(&svc)).expect("create svc");
    let o = now(rt.observe(&project)).expect("observe");
    assert!(
        o.containers.iter().all(|c| c.state == State::Created),
        "{o:?}"
    );
    now(rt.start(&job.name)).expect("start job");
    now(rt.start(&hog.name)).expect("start hog");
    now(rt.start(&svc.name)).expect("start svc");
    // Wait for the job to finish. (No reaping here: waitpid(-1) would steal the children of
    // tests running in parallel; observe sees an exited init as a zombie already.)
    for _ in 0..200 * env::slowdown() {
        let o = now(rt.observe(&project)).expect("observe");
        if o.containers
            .iter()
            .any(|c| c.name == job.name && c.state == State::Exited(4))
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let o = now(rt.observe(&project)).expect("observe");
    let state_of = |n: &str| o.containers.iter().find(|c| c.name == n).map(|c| c.state);
    assert_eq!(state_of(&job.name), Some(State::Exited(4)), "{o:?}");
    assert_eq!(state_of(&svc.name), Some(State::Running), "{o:?}");
    for _ in 0..200 * env::slowdown() {
        let o = now(rt.observe(&project)).expect("observe");
        if o.containers
            .iter()
            .any(|c| c.name == hog.name && c.state != State::Running)
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let o = now(rt.observe(&project)).expect("observe");
    assert_eq!(
        o.containers
            .iter()
            .find(|c| c.name == hog.name)
            .map(|c| c.state),
        Some(State::OomKilled),
        "{o:?}"
    );
    let raw = std::fs::read_to_string(
        state
            .path()
            .join("containers")
            .join(&job.name)
            .join("container.log"),
    )
    .unwrap_or_default();
    // One JSON record per line, Docker's json-file format.
    let log: String = raw
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["log"].as_str().unwrap_or_default().to_string())
        .collect();
    // busybox's image has `nobody` as uid 65534.
    assert!(log.contains("hello from busybox"), "{log}");
    assert!(log.starts_with("65534"), "{log}");
    // /etc/hosts is bound from the container's /dev, where nothing of the staging stays.
    assert!(log.contains("dev: 0\n1\n"), "{log}");
    // Building the root wrote nothing into the writable layer: the init layer holds the mount
    // points and /etc's files (no copy-up, no inode on the host's disk per start).
    let upper = state
        .path()
        .join("containers")
        .join(&job.name)
        .join("upper");
    let written: Vec<_> = std::fs::read_dir(&upper)
        .expect("upper")
        .map(|e| e.map(|e| e.file_name()))
        .collect();
    assert!(written.is_empty(), "{written:?}");
    now(rt.stop(&svc.name, std::time::Duration::from_secs(2))).expect("stop");
    for n in [&job.name, &svc.name, &hog.name] {
        now(rt.remove(n)).expect("remove");
    }
    assert!(
        now(rt.observe(&project))
            .expect("observe")
            .containers
            .is_empty()
    );
    // Nothing of the project remains in the kernel: no cgroup (hence no process), no mount.
    let leftover = std::process::Command::new("find")
        .args([
            "/sys/fs/cgroup",
            "-maxdepth",
            "6",
            "-type",
            "d",
            "-name",
            &project,
        ])
        .output()
        .expect("find");
    assert!(
        leftover.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&leftover.stdout)
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    assert!(!mounts.contains(&project));
    assert!(!state.path().join("containers").join(&svc.name).exists());
}

#[test]
fn ulimits_sysctls_and_shm_size() {
    if !root() {
        return;
    }
    let (r, _b) = run(
        "knobs",
        "ulimit -n; ulimit -Hn; cat /proc/sys/kernel/shmmax; cat /proc/sys/net/ipv4/ip_forward; df -k /dev/shm | tail -1",
        None,
        |s| {
            s.process.rlimits = vec![("nofile".into(), 512, 1024)];
            s.sysctls = vec![
                ("kernel.shmmax".into(), "123456789".into()),
                ("net.ipv4.ip_forward".into(), "1".into()),
            ];
            s.shm_size = Some(8 << 20);
        },
    );
    assert_eq!(r.code, 0, "{}", r.out);
    let l: Vec<&str> = r.out.lines().collect();
    assert_eq!(l[0], "512", "{}", r.out);
    assert_eq!(l[1], "1024", "{}", r.out);
    assert_eq!(l[2], "123456789", "{}", r.out);
    assert_eq!(l[3], "1", "{}", r.out);
    assert!(l[4].split_whitespace().nth(1) == Some("8192"), "{}", r.out);
    // The host's own values are untouched.
    assert_ne!(
        std::fs::read_to_string("/proc/sys/kernel/shmmax")
            .unwrap_or_default()
            .trim(),
        "123456789"
    );
}

#[test]
fn a_host_wide_sysctl_or_an_unraisable_ulimit_is_a_clear_error() {
    let _shared = CPU_QUIET.read().unwrap_or_else(|e| e.into_inner());
    if !root() {
        return;
    }
    set_setup_exe(PathBuf::from(env!("CARGO_BIN_EXE_berth")));
    let dir = tempfile::tempdir().expect("tempdir");
    let attempt = |tweak: &dyn Fn(&mut LaunchSpec)| {
        let mut s = spec(dir.path(), "bad", "true");
        tweak(&mut s);
        let out = File::create(dir.path().join("o")).expect("f");
        match launch(&s, Some(out.try_clone().expect("f")), Some(out)) {
            Err(LaunchError::Setup { source, .. }) => source,
            Ok(r) => {
                let code = r.wait().expect("wait");
                panic!("expected a setup error, the container ran (exit {code})")
            }
            Err(e) => panic!("{e}"),
        }
    };
    let e = attempt(&|s| s.sysctls = vec![("kernel.hostname".into(), "x".into())]);
    assert_eq!(e.step, "set sysctl");
    assert!(e.detail.contains("not namespaced"), "{e}");
    // Raising nofile's hard limit far above the host's: refused with the reason, unless this
    // host lets root raise it (then there is nothing to report).
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("getrlimit");
    let cap_resource = caps::has_cap(
        None,
        caps::CapSet::Bounding,
        caps::Capability::CAP_SYS_RESOURCE,
    )
    .unwrap_or(true);
    if !cap_resource {
        let want = (hard as i64) * 2;
        let e = attempt(&|s| s.process.rlimits = vec![("nofile".into(), 1024, want)]);
        assert_eq!(e.step, "ulimits");
        assert!(e.detail.contains("CAP_SYS_RESOURCE"), "{e}");
    }
}

#[test]
fn init_writes_the_log_as_json_lines_and_rotates_it() {
    if !root() {
        return;
    }
    let (r, b) = run(
        "logs",
        "echo out-1; echo err-1 >&2; i=0; while [ $i -lt 300 ]; do echo line-$i; i=$((i+1)); done; printf no-newline",
        None,
        |s| {
            s.log = Some(berth::runtime::linux::logs::LogSpec {
                max_size: 4096,
                max_files: 2,
            })
        },
    );
    assert_eq!(r.code, 0, "{}", r.out);
    let dir = b.dir.path();
    let read = |f: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join(f))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON record per line"))
            .collect()
    };
    let current = read("container.log");
    let older = read("container.log.1");
    assert!(!older.is_empty(), "rotated");
    assert!(
        !dir.join("container.log.2").exists(),
        "keeps max_files files"
    );
    assert!(
        std::fs::metadata(dir.join("container.log"))
            .map(|m| m.len())
            .unwrap_or(0)
            <= 4096
    );
    let last = current.last().expect("records");
    assert_eq!(last["log"], "no-newline");
    assert_eq!(last["stream"], "stdout");
    assert!(last["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    // The earliest lines were rotated away; the latest are in order.
    let logs: Vec<&str> = current.iter().filter_map(|v| v["log"].as_str()).collect();
    assert!(logs.contains(&"line-299\n"), "{logs:?}");
}

#[test]
fn image_symlinks_on_mount_points_are_not_followed() {
    if !root() || !berth::image::testutil::busybox_available() {
        return;
    }
    // A hostile image: /proc points at /etc and /dev at / (absolute links, which before
    // pivot_root would resolve on the host).
    let img = tempfile::tempdir().expect("image");
    let r = img.path();
    std::fs::create_dir_all(r.join("bin")).expect("bin");
    std::fs::copy("/bin/busybox", r.join("bin/busybox")).expect("busybox");
    for a in ["sh", "cat", "ls", "test", "echo"] {
        std::os::unix::fs::symlink("busybox", r.join("bin").join(a)).expect("applet");
    }
    std::os::unix::fs::symlink("/etc", r.join("proc")).expect("link");
    std::os::unix::fs::symlink("/", r.join("dev")).expect("link");
    let (out, _b) = run(
        "symlinks",
        "cat /proc/1/comm; test -c /dev/null && echo dev-ok; ls /dev | wc -l",
        None,
        |s| {
            s.rootfs = Rootfs::Layers(vec![r.to_path_buf()]);
            s.process.env = vec!["PATH=/bin".into()];
        },
    );
    assert_eq!(out.code, 0, "{}", out.out);
    let lines: Vec<&str> = out.out.lines().collect();
    assert_eq!(lines[0], "berth-init", "{}", out.out);
    assert_eq!(lines[1], "dev-ok", "{}", out.out);
    // The container's own small /dev, not the host's root directory.
    let n: u32 = lines[2].trim().parse().unwrap_or(999);
    assert!(n < 20, "{}", out.out);
    assert!(
        std::fs::symlink_metadata(r.join("proc"))
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false),
        "the image itself is untouched"
    );
}

#[test]
fn a_read_only_root_of_layers_has_no_writable_layer() {
    if !root() || !berth::image::testutil::busybox_available() {
        return;
    }
    let img = tempfile::tempdir().expect("image");
    let r = img.path().join("layer");
    std::fs::create_dir_all(r.join("bin")).expect("bin");
    std::fs::copy("/bin/busybox", r.join("bin/busybox")).expect("busybox");
    for a in ["sh", "cat", "touch", "echo", "grep"] {
        std::os::unix::fs::symlink("busybox", r.join("bin").join(a)).expect("applet");
    }
    let init = berth::runtime::linux::rootfs::init_layer(img.path()).expect("init layer");
    let (out, b) = run(
        "rolayers",
        "touch /x 2>/dev/null && echo WROTE; cat /proc/1/comm; cat /etc/hostname; \
         grep -c ' / overlay ro' /proc/self/mounts",
        None,
        |s| {
            s.rootfs = Rootfs::Layers(vec![r.clone(), init.clone()]);
            s.read_only = true;
            s.process.env = vec!["PATH=/bin".into()];
        },
    );
    assert_eq!(out.code, 0, "{}", out.out);
    let lines: Vec<&str> = out.out.lines().collect();
    assert_eq!(lines, ["berth-init", "rolayers", "1"], "{}", out.out);
    // Nothing of a writable layer was made for it.
    for d in ["upper", "work"] {
        assert!(!b.dir.path().join(d).exists(), "{d} was made");
    }
}

#[test]
fn tty_gives_the_service_a_terminal_and_logs_its_output() {
    if !root() {
        return;
    }
    let (r, b) = run(
        "tty",
        "test -t 0 && test -t 1 && echo on-a-tty; tty",
        None,
        |s| {
            s.process.tty = true;
            s.log = Some(berth::runtime::linux::logs::LogSpec::default());
        },
    );
    assert_eq!(r.code, 0, "{}", r.out);
    let log: String = std::fs::read_to_string(b.dir.path().join("container.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["log"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(log.contains("on-a-tty"), "{log}");
    // The container's own devpts: its first terminal.
    assert!(log.contains("/dev/pts/0"), "{log}");
}

#[test]
fn read_only_root_and_domainname() {
    if !root() {
        return;
    }
    let (r, _b) = run(
        "ro",
        "touch /etc/x 2>/dev/null && echo WROTE-ROOT; touch /dev/shm/x && echo shm-ok; domainname 2>/dev/null || cat /proc/sys/kernel/domainname",
        None,
        |s| {
            s.read_only = true;
            s.domainname = Some("example.test".into());
        },
    );
    assert!(!r.out.contains("WROTE-ROOT"), "{}", r.out);
    assert!(r.out.contains("shm-ok"), "{}", r.out);
    assert!(r.out.contains("example.test"), "{}", r.out);
}

#[test]
fn stdin_open_keeps_stdin_open() {
    if !root() {
        return;
    }
    // With stdin_open, `read` waits (killed by timeout) instead of seeing end of file at once.
    let (r, _b) = run(
        "stdin",
        "if timeout 1 sh -c 'read x'; then echo got-eof; else echo waited; fi",
        None,
        |s| s.process.stdin_open = true,
    );
    assert!(r.out.contains("waited"), "{}", r.out);
    let (r, _b) = run(
        "nostdin",
        "if timeout 1 sh -c 'read x'; then echo got-eof; else echo eof-or-fail; fi",
        None,
        |_| {},
    );
    assert!(!r.out.contains("waited"), "{}", r.out);
}

#[test]
fn the_init_runs_a_sealed_copy_of_berth_init() {
    if !root() {
        eprintln!("skipped: needs root");
        return;
    }
    // CVE-2019-5736: whatever a container reaches through its init's /proc/<pid>/exe must not
    // be writable: the init runs berth-init from a memfd sealed against writes, not a file.
    let _shared = CPU_QUIET.read().unwrap_or_else(|e| e.into_inner());
    set_setup_exe(PathBuf::from(env!("CARGO_BIN_EXE_berth")));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = spec(dir.path(), "exe", "sleep 30");
    s.process.default_seccomp().expect("seccomp");
    let running = launch(&s, None, None).expect("launch");
    let exe = format!("/proc/{}/exe", running.pid);
    let target = std::fs::read_link(&exe).map(|p| p.display().to_string());
    let write = std::fs::OpenOptions::new().write(true).open(&exe);
    let seals = std::fs::File::open(&exe).ok().and_then(|f| {
        nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_GET_SEALS)
            .ok()
            .map(nix::fcntl::SealFlag::from_bits_truncate)
    });
    let content = std::fs::read(&exe).ok();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(running.pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = running.wait();
    let target = target.expect("readlink of the init's exe");
    assert!(
        target.starts_with("/memfd:berth-init"),
        "the init runs {target}"
    );
    assert!(write.is_err(), "the init's executable opened for writing");
    let seals = seals.expect("F_GET_SEALS on the init's executable");
    assert!(
        seals.contains(nix::fcntl::SealFlag::F_SEAL_WRITE | nix::fcntl::SealFlag::F_SEAL_SEAL),
        "the init's executable is not sealed: {seals:?}"
    );
    assert_eq!(
        content.as_deref(),
        Some(berth::runtime::linux::setup::init_program()),
        "the init does not run berth-init"
    );
}
