//! The isolation suite: each probe tries one way out of a container started by `berth up` and
//! asserts that the kernel refuses it (or, for a `devices:` entry or `privileged`, that exactly
//! what the file grants is granted).
//!
//! The probes are one static program (`probe.rs`, built here with rustc, or taken from
//! `BERTH_PROBE_BIN`), bind-mounted into the containers and run with `berth exec`; its exit
//! status is 0 when the way out worked and the errno otherwise (for the scans, 1 when nothing
//! was found). The same program gave Docker's column of the README's table.
//!
//! What depends on the kernel's own enforcement is proven in a VM (`.ci/isolation`, both
//! cgroup modes, AppArmor on, a scratch disk as /dev/vda named by `BERTH_ISOLATION_DISK`): this
//! development host refuses every device open to everyone, so the device probes are skipped
//! where no disk is named, and the AppArmor probes where AppArmor is off.
//!
//! A harness of its own (not libtest): the containers are started once for all probes and
//! always taken down, and each probe is reported as a test.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// What a probe must find.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// The kernel refuses it, with any errno.
    Refused,
    /// The kernel refuses it with this errno.
    Errno(i32),
    /// It works (what the file grants).
    Works,
    /// A scan found no way out.
    NoWayOut,
}

/// When a probe can run.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Needs {
    Always,
    /// A host block device to aim at (the VM's /dev/vda).
    Disk,
    /// AppArmor enforcing (the VM).
    AppArmor,
}

struct Probe {
    /// The test's name.
    name: &'static str,
    service: &'static str,
    args: Vec<String>,
    expect: Expect,
    needs: Needs,
}

const SERVICES: &str = "
  default:
    image: host
    command: [sleep, '100000']
    volumes: ['PROBE:/probe:ro']
  devr:
    image: host
    command: [sleep, '100000']
    network_mode: none
    volumes: ['PROBE:/probe:ro']
    devices: ['DISK:DISK:r']
  priv:
    image: host
    command: [sleep, '100000']
    network_mode: none
    privileged: true
    volumes: ['PROBE:/probe:ro']
  sysadmin:
    image: host
    command: [sleep, '100000']
    network_mode: none
    cap_add: [SYS_ADMIN]
    volumes: ['PROBE:/probe:ro']
";

fn probes(disk: Option<(&str, u32, u32)>) -> Vec<Probe> {
    use Expect::*;
    use Needs::*;
    let (path, maj, min) = disk.unwrap_or(("/dev/vda", 254, 0));
    let (maj, min) = (maj.to_string(), min.to_string());
    let host_pid = std::process::id().to_string();
    let p = |name, service, args: &[&str], expect, needs| Probe {
        name,
        service,
        args: args.iter().map(|s| s.to_string()).collect(),
        expect,
        needs,
    };
    let eperm = Errno(libc::EPERM);
    vec![
        // The host's disk, through a node the container makes (CAP_MKNOD is a default).
        p(
            "mknod_and_read_a_host_disk",
            "default",
            &["mknod-read", "/dev/probe-disk", &maj, &min],
            eperm,
            Disk,
        ),
        p(
            "mknod_and_write_a_host_disk",
            "default",
            &["mknod-write", "/dev/probe-disk", &maj, &min],
            eperm,
            Disk,
        ),
        p(
            "devices_r_entry_reads_the_disk",
            "devr",
            &["open-read", path],
            Works,
            Disk,
        ),
        p(
            "devices_r_entry_cannot_write_it",
            "devr",
            &["open-write", path],
            eperm,
            Disk,
        ),
        p(
            "devices_r_entry_cannot_write_a_node_made_again",
            "devr",
            &["mknod-write", "/dev/probe-disk", &maj, &min],
            eperm,
            Disk,
        ),
        p(
            "privileged_reads_the_disk",
            "priv",
            &["mknod-read", "/dev/probe-disk", &maj, &min],
            Works,
            Disk,
        ),
        p(
            "privileged_writes_the_disk",
            "priv",
            &["mknod-write", "/dev/probe-disk", &maj, &min],
            Works,
            Disk,
        ),
        p("kmsg", "default", &["kmsg"], eperm, Disk),
        // /proc and /sys.
        p(
            "proc_sysrq_trigger",
            "default",
            &["write-same", "/proc/sysrq-trigger"],
            Refused,
            Always,
        ),
        p(
            "proc_sys_kernel_core_pattern",
            "default",
            &["write-same", "/proc/sys/kernel/core_pattern"],
            Refused,
            Always,
        ),
        p(
            "proc_sys_vm_drop_caches",
            "default",
            &["write-same", "/proc/sys/vm/drop_caches"],
            Refused,
            Always,
        ),
        p("sysfs_write", "default", &["sysfs-write"], Refused, Always),
        p(
            "cgroupfs_write",
            "default",
            &["cgroup-write"],
            Refused,
            Always,
        ),
        // Mounts and the root.
        p("mount", "default", &["mount"], eperm, Always),
        p(
            "umount_a_masked_path",
            "default",
            &["umount", "/proc/kcore"],
            eperm,
            Always,
        ),
        p("pivot_root", "default", &["pivot-root"], eperm, Always),
        p(
            "chroot_breakout",
            "default",
            &["chroot-breakout"],
            NoWayOut,
            Always,
        ),
        // New namespaces, and the cgroup release agent (CVE-2022-0492).
        p(
            "unshare_user_namespace",
            "default",
            &["userns"],
            eperm,
            Always,
        ),
        p(
            "unshare_user_namespace_then_mount",
            "default",
            &["userns-mount"],
            eperm,
            Always,
        ),
        p(
            "cgroup_release_agent_from_a_user_namespace",
            "default",
            &["userns-release-agent"],
            eperm,
            Always,
        ),
        p("fsopen", "default", &["fsopen"], eperm, Always),
        // Kernel interfaces Docker's seccomp profile closes.
        p("keyctl", "default", &["keyctl"], eperm, Always),
        p("add_key", "default", &["add-key"], eperm, Always),
        p("bpf", "default", &["bpf"], eperm, Always),
        p(
            "perf_event_open",
            "default",
            &["perf-event-open"],
            eperm,
            Always,
        ),
        p("userfaultfd", "default", &["userfaultfd"], eperm, Always),
        p("io_uring", "default", &["io-uring"], Refused, Always),
        p(
            "open_by_handle_at_shocker",
            "default",
            &["open-by-handle"],
            eperm,
            Always,
        ),
        p("kexec_load", "default", &["kexec-load"], eperm, Always),
        p("init_module", "default", &["init-module"], eperm, Always),
        p("reboot", "default", &["reboot"], eperm, Always),
        p("ioperm", "default", &["ioperm"], eperm, Always),
        p("settimeofday", "default", &["settimeofday"], eperm, Always),
        // Other processes.
        p(
            "ptrace_the_init",
            "default",
            &["ptrace", "1"],
            Refused,
            Always,
        ),
        p(
            "ptrace_a_host_process",
            "default",
            &["ptrace", &host_pid],
            Refused,
            Always,
        ),
        p(
            "host_files_through_proc_pid_root_or_cwd",
            "default",
            &["proc-root"],
            NoWayOut,
            Always,
        ),
        p(
            "overwrite_an_executable_through_proc_pid_exe",
            "default",
            &["proc-exe"],
            NoWayOut,
            Always,
        ),
        p(
            "inherited_descriptors",
            "default",
            &["inherited-fds"],
            NoWayOut,
            Always,
        ),
        // What only the AppArmor profile refuses: a mount with the capability to do it.
        p(
            "apparmor_refuses_a_mount_with_cap_sys_admin",
            "sysadmin",
            &["mount"],
            Errno(libc::EACCES),
            AppArmor,
        ),
        p(
            "apparmor_refuses_the_release_agent_mount_with_cap_sys_admin",
            "sysadmin",
            &["userns-release-agent"],
            Refused,
            AppArmor,
        ),
        p(
            "read_proc_kcore",
            "default",
            &["open-read", "/proc/kcore"],
            Refused,
            Always,
        ),
        p(
            "umount_proc_sys",
            "default",
            &["umount", "/proc/sys"],
            eperm,
            Always,
        ),
        p(
            "proc_sys_write_with_cap_sys_admin",
            "sysadmin",
            &["write-same", "/proc/sys/kernel/core_pattern"],
            Refused,
            Always,
        ),
    ]
}

fn berth(dir: &Path, state: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .current_dir(dir)
        .env("BERTH_ROOT", state)
        .env_remove("COMPOSE_FILE")
        .env_remove("COMPOSE_PROJECT_NAME")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run berth")
}

/// The probe program: `BERTH_PROBE_BIN`, or built from probe.rs with the toolchain's rustc.
fn probe_bin(out: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("BERTH_PROBE_BIN") {
        return PathBuf::from(p);
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/isolation/probe.rs");
    let bin = out.join("probe");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let st = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "-C",
            "opt-level=1",
            "-C",
            "target-feature=+crt-static",
            "-o",
        ])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("run rustc");
    assert!(st.success(), "building {} failed", src.display());
    bin
}

/// The scratch disk's path and numbers, when one is named.
fn disk() -> Option<(String, u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let path = std::env::var("BERTH_ISOLATION_DISK").ok()?;
    let md = std::fs::metadata(&path).expect("BERTH_ISOLATION_DISK");
    let dev = md.rdev();
    Some((
        path,
        nix::sys::stat::major(dev) as u32,
        nix::sys::stat::minor(dev) as u32,
    ))
}

/// Takes the project down whatever happens.
struct Down<'a>(&'a Path, &'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = berth(self.0, self.1, &["down", "-t", "0"]);
    }
}

fn main() -> ExitCode {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !nix::unistd::Uid::effective().is_root() {
        println!("isolation: skipped (needs root)");
        return ExitCode::SUCCESS;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().join("state");
    let dir = tmp.path().join("project");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let probe = probe_bin(tmp.path());
    let disk = disk();
    let apparmor = berth::runtime::linux::apparmor::enabled();
    let project = format!("isolation-{}", std::process::id());
    let mut services = SERVICES.replace("PROBE", &probe.to_string_lossy());
    match &disk {
        Some((path, _, _)) => services = services.replace("DISK", path),
        None => {
            // No disk to hand to `devr`: it goes.
            let start = services.find("  devr:").unwrap_or(0);
            let end = services.find("  priv:").unwrap_or(start);
            services.replace_range(start..end, "");
        }
    }
    std::fs::write(
        dir.join("berth.yaml"),
        format!("name: {project}\nservices:{services}"),
    )
    .expect("write");
    let _down = Down(&dir, &state);
    let up = berth(&dir, &state, &["up", "-d", "--progress", "quiet"]);
    assert!(
        up.status.success(),
        "up failed: {}",
        String::from_utf8_lossy(&up.stderr)
    );

    let mut failed = Vec::new();
    let mut ran = 0;
    let all = probes(disk.as_ref().map(|(p, a, b)| (p.as_str(), *a, *b)));
    println!("\nrunning {} isolation probes", all.len());
    for pr in &all {
        if !filter.is_empty() && !filter.iter().any(|f| pr.name.contains(f.as_str())) {
            continue;
        }
        let skip = match pr.needs {
            Needs::Disk if disk.is_none() => Some("no disk: BERTH_ISOLATION_DISK, in the VM"),
            Needs::AppArmor if !apparmor => Some("AppArmor is off here"),
            _ => None,
        };
        if let Some(why) = skip {
            println!("test {} ... skipped ({why})", pr.name);
            continue;
        }
        ran += 1;
        let mut args = vec!["exec", "-T", pr.service, "/probe"];
        args.extend(pr.args.iter().map(String::as_str));
        let o = berth(&dir, &state, &args);
        let code = o.status.code().unwrap_or(-1);
        let said = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let ok = match pr.expect {
            Expect::Works => code == 0,
            Expect::Refused => code > 0 && code < 255,
            Expect::Errno(e) => code == e,
            Expect::NoWayOut => code == 1,
        };
        if ok {
            println!("test {} ... ok ({said})", pr.name);
        } else {
            println!("test {} ... FAILED", pr.name);
            failed.push(format!(
                "{}: expected {:?}, the probe exited {code}: {said} {}",
                pr.name,
                pr.expect,
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
    }

    // The profile every process of a default container runs under.
    if apparmor && filter.is_empty() {
        ran += 1;
        let o = berth(
            &dir,
            &state,
            &[
                "exec",
                "-T",
                "default",
                "cat",
                "/proc/self/attr/current",
                "/proc/1/attr/current",
            ],
        );
        let said = String::from_utf8_lossy(&o.stdout);
        if said == "berth-default (enforce)\nberth-default (enforce)\n" {
            println!("test apparmor_profile_of_the_service_and_its_init ... ok");
        } else {
            println!("test apparmor_profile_of_the_service_and_its_init ... FAILED");
            failed.push(format!("apparmor profile: {said:?}"));
        }
    }

    // The device policy is in the kernel: on v2 one program on the default container's
    // cgroup and none on the privileged one's; on v1 the default list in `devices.list`.
    if filter.is_empty() {
        ran += 1;
        let cg = |s: &str| {
            berth::runtime::linux::cgroup::Cgroup::open(&format!("{project}/{project}-{s}-1"))
                .ok()
                .flatten()
                .expect("the container's cgroup")
        };
        let (def, prv) = (cg("default"), cg("priv"));
        let seen = match def.version {
            berth::runtime::linux::cgroup::Version::V2 => {
                let n = |c: &berth::runtime::linux::cgroup::Cgroup| {
                    berth::runtime::linux::devices::programs_at(&c.dirs[0].1)
                        .map_err(|e| e.to_string())
                };
                format!("programs: default {:?}, privileged {:?}", n(&def), n(&prv))
            }
            berth::runtime::linux::cgroup::Version::V1 { .. } => {
                let list = |c: &berth::runtime::linux::cgroup::Cgroup| {
                    c.dirs
                        .iter()
                        .find(|(k, _)| k == "devices")
                        .and_then(|(_, d)| std::fs::read_to_string(d.join("devices.list")).ok())
                        .unwrap_or_default()
                };
                format!("default:\n{}privileged:\n{}", list(&def), list(&prv))
            }
        };
        let want = match def.version {
            berth::runtime::linux::cgroup::Version::V2 => {
                "programs: default Ok(1), privileged Ok(0)".to_string()
            }
            berth::runtime::linux::cgroup::Version::V1 { .. } => {
                let rules: String = berth::runtime::linux::devices::Policy::default()
                    .rules()
                    .iter()
                    .map(|r| r.v1_line() + "\n")
                    .collect();
                format!("default:\n{rules}privileged:\na *:* rwm\n")
            }
        };
        if seen == want {
            println!("test device_policy_is_in_the_containers_cgroup ... ok");
        } else {
            println!("test device_policy_is_in_the_containers_cgroup ... FAILED");
            failed.push(format!("device policy: expected {want:?}, found {seen:?}"));
        }
    }

    // Nothing is left: the containers' cgroups (and with them the device programs the kernel
    // attached to them) and every mount under the state root.
    let pids: Vec<String> = String::from_utf8_lossy(&berth(&dir, &state, &["ps", "-q"]).stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let down = berth(&dir, &state, &["down", "-t", "0"]);
    ran += 1;
    let mut left = Vec::new();
    if !down.status.success() {
        left.push(format!(
            "down failed: {}",
            String::from_utf8_lossy(&down.stderr)
        ));
    }
    for s in ["default", "devr", "priv", "sysadmin"] {
        let cg = format!("{project}/{project}-{s}-1");
        if berth::runtime::linux::cgroup::Cgroup::open(&cg)
            .ok()
            .flatten()
            .is_some()
        {
            left.push(format!("cgroup {cg}"));
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if mounts.contains(state.to_string_lossy().as_ref()) {
        left.push("a mount under the state root".into());
    }
    if left.is_empty() {
        println!(
            "test down_leaves_no_cgroup_program_or_mount ... ok ({} containers)",
            pids.len()
        );
    } else {
        println!("test down_leaves_no_cgroup_program_or_mount ... FAILED");
        failed.push(format!("left behind: {left:?}"));
    }

    println!(
        "\nisolation: {} passed; {} failed",
        ran - failed.len(),
        failed.len()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        for f in &failed {
            eprintln!("FAILED {f}");
        }
        ExitCode::FAILURE
    }
}
