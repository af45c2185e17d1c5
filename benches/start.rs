//! Container start benchmark: create + start + wait for exit of `/bin/true`, 100 runs, median
//! and p95, with and without a network namespace, side by side in the same run with `crun run`
//! on the same root filesystem (a static busybox) when crun is installed. Then the memory one
//! idle container costs beyond its service process (its init's PSS).
//!
//! Needs root. `cargo bench --bench start` (RUNS=200 for more runs). berth's figure is per
//! container from a long-lived berth process (the supervisor's case: the sealed copy of berth is
//! made once); crun's is one `crun run` per container, which is how crun is used.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth::runtime::linux::cgroup::Cgroup;
use berth::runtime::linux::launch::{launch, set_setup_exe};
use berth::runtime::linux::spec::{LaunchSpec, Limits, Process, Rootfs};

fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).expect("mkdir");
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("busybox-static is needed: apt-get install busybox-static");
    // Relative links (`busybox --install -s` would point them at this host path).
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
    for d in ["proc", "dev", "sys", "tmp", "etc", "mnt"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    root
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (q(0.5), q(0.95), v[0])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Removes a cgroup when dropped, so a failed run leaves nothing behind.
struct CgGuard(Cgroup);

impl Drop for CgGuard {
    fn drop(&mut self) {
        let _ = self.0.remove();
    }
}

struct Berth {
    /// The image's layer and berth's init layer, as the runtime gives a container.
    layers: Vec<PathBuf>,
    work: PathBuf,
}

impl Berth {
    fn spec(&self, name: &str, net: bool, read_only: bool, args: &[&str]) -> LaunchSpec {
        let mut process = Process {
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            ..Process::default()
        };
        process.default_seccomp().expect("seccomp");
        LaunchSpec {
            name: name.into(),
            hostname: name.into(),
            domainname: None,
            rootfs: Rootfs::Layers(self.layers.clone()),
            dir: self.work.join(name),
            read_only,
            cgroups: Vec::new(),
            own_network: net,
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
            process,
        }
    }

    /// One container from nothing to removed, as `crun run` does it.
    fn run_true(&self, name: &str, net: bool, read_only: bool) -> Duration {
        let t = Instant::now();
        let cg = CgGuard(
            Cgroup::create(
                &format!("bench-{}/{name}", std::process::id()),
                &Limits::default(),
            )
            .expect("cgroup"),
        );
        let t1 = t.elapsed();
        let mut s = self.spec(name, net, read_only, &["/bin/true"]);
        if std::env::var_os("NO_CGROUP_JOIN").is_none() {
            s.cgroups = cg.0.paths();
        }
        let trace = std::env::var_os("BERTH_TRACE_SETUP").is_some();
        let errf = std::env::temp_dir().join(format!("berth-bench-{name}.trace"));
        let stderr = if trace {
            Some(File::create(&errf).expect("trace file"))
        } else {
            None
        };
        if trace {
            let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
            eprintln!(
                "trace launch {:.3}",
                now.tv_sec() as f64 * 1e3 + now.tv_nsec() as f64 / 1e6
            );
        }
        let r = launch(&s, None, stderr).expect("launch");
        let t2 = t.elapsed();
        let code = r.wait().expect("wait");
        assert_eq!(code, 0);
        let t3 = t.elapsed();
        if trace {
            let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
            eprint!("{}", std::fs::read_to_string(&errf).unwrap_or_default());
            let _ = std::fs::remove_file(&errf);
            eprintln!(
                "trace exited {:.3}",
                now.tv_sec() as f64 * 1e3 + now.tv_nsec() as f64 / 1e6
            );
        }
        cg.0.remove().expect("cgroup remove");
        let t4 = t.elapsed();
        std::fs::remove_dir_all(&s.dir).expect("remove container dir");
        if std::env::var_os("BREAKDOWN").is_some() {
            eprintln!(
                "cg {:.2} launch {:.2} wait {:.2} cgrm {:.2} rm {:.2}",
                ms(t1),
                ms(t2 - t1),
                ms(t3 - t2),
                ms(t4 - t3),
                ms(t.elapsed() - t4)
            );
        }
        t.elapsed()
    }
}

/// A crun bundle for the same rootfs: `crun spec`, then our args, namespaces and a read-only root.
fn crun_bundle(dir: &Path, rootfs: &Path, net: bool) -> Option<PathBuf> {
    let b = dir.join(if net { "bundle-net" } else { "bundle-nonet" });
    std::fs::create_dir_all(&b).ok()?;
    let st = Command::new("crun")
        .arg("spec")
        .current_dir(&b)
        .status()
        .ok()?;
    if !st.success() {
        return None;
    }
    let path = b.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
    cfg["root"] = serde_json::json!({"path": rootfs, "readonly": true});
    cfg["process"]["args"] = serde_json::json!(["/bin/true"]);
    cfg["process"]["terminal"] = serde_json::json!(false);
    let ns: Vec<serde_json::Value> = ["pid", "ipc", "uts", "mount"]
        .iter()
        .map(|t| serde_json::json!({"type": t}))
        .chain(net.then(|| serde_json::json!({"type": "network"})))
        .collect();
    cfg["linux"]["namespaces"] = serde_json::Value::Array(ns);
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).ok()?).ok()?;
    Some(b)
}

fn crun_run(bundle: &Path, id: &str) -> Option<Duration> {
    let t = Instant::now();
    let st = Command::new("crun")
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    st.success().then(|| t.elapsed())
}

/// crun 1.8 refuses hybrid hosts where hugetlb sits on the cgroup2 hierarchy; mount it as a v1
/// hierarchy for crun's runs (as a stock systemd hybrid host has it) and undo that afterwards.
struct Hugetlb(bool);

impl Hugetlb {
    fn on() -> Hugetlb {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let on_v2 = std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers")
            .unwrap_or_default()
            .contains("hugetlb");
        if !on_v2
            || info
                .lines()
                .any(|l| l.contains(" - cgroup ") && l.contains("hugetlb"))
        {
            return Hugetlb(false);
        }
        let _ = std::fs::create_dir_all("/sys/fs/cgroup/hugetlb");
        let ok = Command::new("mount")
            .args([
                "-t",
                "cgroup",
                "-o",
                "hugetlb",
                "cgroup",
                "/sys/fs/cgroup/hugetlb",
            ])
            .status()
            .is_ok_and(|s| s.success());
        Hugetlb(ok)
    }
}

/// hugetlb's line of /proc/cgroups: (hierarchy id, number of cgroups). Id 0 is cgroup2.
fn hugetlb_hierarchy() -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/proc/cgroups").ok()?;
    let line = text.lines().find(|l| l.starts_with("hugetlb"))?;
    let mut f = line.split_whitespace().skip(1);
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

fn remove_child_cgroups(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_child_cgroups(&e.path());
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

fn mount_hugetlb(on: bool) {
    let mnt = "/sys/fs/cgroup/hugetlb";
    if on {
        let _ = std::fs::create_dir_all(mnt);
        let _ = Command::new("mount")
            .args(["-t", "cgroup", "-o", "hugetlb", "cgroup", mnt])
            .status();
    } else {
        let _ = Command::new("umount").arg(mnt).status();
        let _ = std::fs::remove_dir(mnt);
    }
}

impl Drop for Hugetlb {
    fn drop(&mut self) {
        if !self.0 {
            return;
        }
        // A v1 hierarchy unmounted while a child cgroup is still dying (crun's, just removed)
        // lives on, invisible, and keeps hugetlb from cgroup2: wait for the children to go,
        // and if the hierarchy survives the umount all the same, mount and unmount it again.
        for _ in 0..5 {
            for _ in 0..50 {
                remove_child_cgroups(Path::new("/sys/fs/cgroup/hugetlb"));
                if hugetlb_hierarchy().is_none_or(|(_, n)| n <= 1) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            mount_hugetlb(false);
            for _ in 0..20 {
                if hugetlb_hierarchy().is_none_or(|(h, _)| h == 0) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            mount_hugetlb(true);
        }
        eprintln!("warning: hugetlb did not go back to cgroup2; see /proc/cgroups");
    }
}

fn pss_kib(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("the start benchmark needs root");
        return;
    }
    // `cargo bench` passes `--bench`; nothing to parse.
    set_setup_exe(PathBuf::from(env!("CARGO_BIN_EXE_berth")));
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let tmp = tempfile::tempdir().expect("tempdir");
    let rootfs = busybox_rootfs(tmp.path());
    let b = Berth {
        layers: vec![
            rootfs.clone(),
            berth::runtime::linux::rootfs::init_layer(tmp.path()).expect("init layer"),
        ],
        work: tmp.path().join("containers"),
    };
    let have_crun = Command::new("crun")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let hugetlb = if have_crun { Some(Hugetlb::on()) } else { None };
    let bundles = if have_crun {
        (
            crun_bundle(tmp.path(), &rootfs, true),
            crun_bundle(tmp.path(), &rootfs, false),
        )
    } else {
        (None, None)
    };

    // The containers' parent cgroup stays for the whole run, as `berth/<project>` does while
    // a project runs: each container then makes and removes only its own cgroup.
    let _parent = CgGuard(
        Cgroup::create(
            &format!("bench-{}/keep", std::process::id()),
            &Limits::default(),
        )
        .expect("cgroup"),
    );
    // Warm-up, then the variants round-robin so drift spreads evenly.
    for i in 0..5 {
        b.run_true(&format!("w{i}"), true, false);
    }
    // crun's bundle has a read-only root (one rootfs directory for every run): berth's
    // read-only rows are the like-for-like ones; the writable rows add the container's own
    // writable layer, made and removed with each container.
    let mut results: Vec<(&str, Vec<f64>)> = vec![
        ("berth, all namespaces incl. net", Vec::new()),
        ("berth, no network namespace", Vec::new()),
        ("berth, read-only root, incl. net", Vec::new()),
        ("berth, read-only root, no net", Vec::new()),
        ("crun run, all namespaces incl. net", Vec::new()),
        ("crun run, no network namespace", Vec::new()),
    ];
    for i in 0..runs {
        results[0]
            .1
            .push(ms(b.run_true(&format!("n{i}"), true, false)));
        results[1]
            .1
            .push(ms(b.run_true(&format!("h{i}"), false, false)));
        results[2]
            .1
            .push(ms(b.run_true(&format!("rn{i}"), true, true)));
        results[3]
            .1
            .push(ms(b.run_true(&format!("rh{i}"), false, true)));
        if let Some(bn) = &bundles.0
            && let Some(d) = crun_run(bn, &format!("berth-bench-{}-n{i}", std::process::id()))
        {
            results[4].1.push(ms(d));
        }
        if let Some(bh) = &bundles.1
            && let Some(d) = crun_run(bh, &format!("berth-bench-{}-h{i}", std::process::id()))
        {
            results[5].1.push(ms(d));
        }
    }
    drop(hugetlb);
    println!("\ncreate + start + wait for exit of /bin/true, {runs} runs (ms):");
    println!("{:<38} {:>8} {:>8} {:>8}", "", "median", "p95", "min");
    for (name, v) in &results {
        if v.is_empty() {
            println!("{name:<38} (not installed or failed)");
            continue;
        }
        let (med, p95, min) = stats(v.clone());
        println!("{name:<38} {med:>8.2} {p95:>8.2} {min:>8.2}");
    }

    // What device access control adds to a start (every row above includes it): loading the
    // program (what a runtime that caches nothing pays per start; berth loads it once per
    // process and rule set) and putting the policy in force on a new cgroup.
    {
        use berth::runtime::linux::devices::{Policy, load};
        let rules = Policy::default().rules();
        let mut loads = Vec::new();
        let mut applies = Vec::new();
        let v2 = matches!(
            berth::runtime::linux::cgroup::detect(),
            Ok(berth::runtime::linux::cgroup::Version::V2)
        );
        // Beside the containers' parent, not below it: on v1 a cgroup cannot allow more devices
        // than its parent, and that parent carries the default list.
        for i in 0..runs {
            // Loading needs only bpf(2), so it is timed on a v1 host too (where berth itself
            // uses the devices controller instead).
            let t = Instant::now();
            if let Ok(fd) = load(&rules) {
                loads.push(ms(t.elapsed()) * 1000.0);
                drop(fd);
            }
            let open = Policy {
                allow_all: true,
                extra: Vec::new(),
            };
            let cg = CgGuard(
                Cgroup::create(
                    &format!("bench-{}/dev{i}", std::process::id()),
                    &Limits {
                        devices: open,
                        ..Limits::default()
                    },
                )
                .expect("cgroup"),
            );
            let t = Instant::now();
            cg.0.apply_devices(&Policy::default())
                .expect("device policy");
            applies.push(ms(t.elapsed()) * 1000.0);
        }
        println!(
            "
device access control, per start ({runs} runs, microseconds):"
        );
        println!("{:<38} {:>8} {:>8} {:>8}", "", "median", "p95", "min");
        if !loads.is_empty() {
            let (med, p95, min) = stats(loads);
            println!(
                "{:<38} {med:>8.1} {p95:>8.1} {min:>8.1}",
                "load the program (uncached)"
            );
        }
        let (med, p95, min) = stats(applies);
        let what = if v2 {
            "attach the cached program"
        } else {
            "write devices.deny/allow (v1)"
        };
        println!("{what:<38} {med:>8.1} {p95:>8.1} {min:>8.1}");
    }

    // Memory of idle containers beyond their service: each init's PSS.
    let n: usize = std::env::var("IDLE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut running = Vec::new();
    let mut cgs = Vec::new();
    for i in 0..n {
        let cg = CgGuard(
            Cgroup::create(
                &format!("bench-{}/idle{i}", std::process::id()),
                &Limits::default(),
            )
            .expect("cgroup"),
        );
        let mut s = b.spec(&format!("idle{i}"), true, false, &["/bin/sleep", "1000"]);
        s.cgroups = cg.0.paths();
        let out = File::create(tmp.path().join(format!("idle{i}.log"))).expect("log");
        running.push(launch(&s, None, Some(out)).expect("launch"));
        cgs.push(cg);
    }
    std::thread::sleep(Duration::from_millis(300));
    let pss: Vec<u64> = running.iter().filter_map(|r| pss_kib(r.pid)).collect();
    let avg = pss.iter().sum::<u64>() as f64 / pss.len().max(1) as f64;
    println!("\nidle container overhead (berth-init PSS, {n} containers): {avg:.0} KiB each");
    if std::env::var_os("SMAPS").is_some()
        && let Some(r) = running.first()
    {
        // Where an init's memory goes, biggest first.
        let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", r.pid)).unwrap_or_default();
        let mut maps: Vec<(u64, String)> = Vec::new();
        let mut name = String::new();
        for l in smaps.lines() {
            if l.contains('-') && !l.contains(':')
                || l.split_whitespace().count() >= 5
                    && l.as_bytes()[0].is_ascii_hexdigit()
                    && l.contains(" r")
            {
                name = l.split_whitespace().skip(5).collect::<Vec<_>>().join(" ");
                if name.is_empty() {
                    name = l.split_whitespace().next().unwrap_or_default().to_string();
                }
            } else if let Some(v) = l.strip_prefix("Pss:") {
                let kb: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                maps.push((kb, name.clone()));
            }
        }
        maps.sort_by_key(|m| std::cmp::Reverse(m.0));
        for (kb, n) in maps.iter().take(8) {
            println!("  {kb:>6} KiB  {n}");
        }
    }
    for r in &running {
        let _ = r.stop(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(1));
    }
    // Removing the cgroups kills what is left in them.
    drop(cgs);
}
