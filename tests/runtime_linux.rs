//! Real containers on the real kernel (root required; CI runs as root). Each test uses its own
//! state directory and cgroup name and removes both.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use berth::runtime::linux::cgroup::Cgroup;
use berth::runtime::linux::launch::{LaunchError, launch, set_setup_exe};
use berth::runtime::linux::spec::{LaunchSpec, Limits, Process, Rootfs};

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
fn run(
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
    let running = launch(&s, Stdio::from(out), Stdio::from(err)).expect("launch");
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
        "echo pid=$$; cat /proc/1/comm; hostname; ls /proc | grep -c '^[0-9]'; ip -o link 2>/dev/null | wc -l; cat /proc/self/mountinfo | wc -l; exit 7",
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
}

#[test]
fn host_image_hides_secrets_and_keeps_writes_private() {
    if !root() {
        return;
    }
    let (r, b) = run(
        "hostimg",
        "echo x > /etc/berth-test && cat /etc/berth-test; test -e /etc/shadow && echo shadow-visible; ls /root /home | wc -l; test -e /etc/os-release && echo os-release",
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
}

#[test]
fn setup_failure_names_the_step() {
    if !root() {
        return;
    }
    set_setup_exe(PathBuf::from(env!("CARGO_BIN_EXE_berth")));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = spec(dir.path(), "fail", "true");
    s.process.args = vec!["/no/such/program".into()];
    let out = File::create(dir.path().join("o")).expect("f");
    let e = launch(
        &s,
        Stdio::from(out.try_clone().expect("f")),
        Stdio::from(out),
    );
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
