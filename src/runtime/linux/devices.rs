//! Device access control: which device nodes a container's processes may make, read and write.
//!
//! A container's root holds CAP_MKNOD (Docker's default set), and the kernel checks a device
//! node's own permission bits only: without a rule in the container's cgroup, `mknod /dev/hd b
//! 254 0` followed by an open reads and writes the host's disk. The kernel's answer is the
//! device cgroup (Documentation/admin-guide/cgroup-v1/devices.rst): on cgroup v1 the `devices`
//! controller's allow list, on cgroup v2 an eBPF program of type `BPF_PROG_TYPE_CGROUP_DEVICE`
//! attached to the container's cgroup, which the kernel runs at every mknod and every open of a
//! device node (and at the mount of a block device) by a process of that cgroup.
//!
//! The program is generated here from the rules, like the seccomp filter: a few instructions
//! per rule, checked against the rules themselves by a small interpreter in the unit tests. It
//! is loaded once per rule set and process and attached to each container's cgroup; the kernel
//! detaches it when the cgroup is removed.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

pub use crate::runtime::lower::devices::{
    ALL_ACCESS, DEFAULT_RULES, Kind, MKNOD, Policy, READ, Rule, WRITE, parse_access, parse_rule,
};

/// An eBPF instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
struct Insn {
    code: u8,
    /// dst in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

// The opcodes the program uses (include/uapi/linux/bpf.h, bpf_common.h).
const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU64_AND_K: u8 = 0x57;
const ALU64_RSH_K: u8 = 0x77;
const ALU64_MOV_K: u8 = 0xb7;
const ALU64_MOV_X: u8 = 0xbf;
const JMP_JNE_K: u8 = 0x55;
const JMP_EXIT: u8 = 0x95;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0xf),
        off,
        imm,
    }
}

/// The program for `rules`: 1 (allow) when one of them covers the request, 0 otherwise.
///
/// The context (`struct bpf_cgroup_dev_ctx`) is `access_type` (the access bits << 16 | the
/// device type), `major`, `minor`, three u32 at offsets 0, 4 and 8. They are loaded once into
/// r2 (type), r3 (access), r4 and r5; each rule then tests what it names and jumps to the next
/// rule on the first mismatch.
fn program(rules: &[Rule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU64_MOV_X, 3, 2, 0, 0),
        insn(ALU64_AND_K, 2, 0, 0, 0xffff),
        insn(ALU64_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for r in rules {
        // Tests as (instructions before the jump, register, value); a jump's offset is the
        // number of instructions left in the rule after it.
        let mut tests: Vec<(Vec<Insn>, u8, i32)> = Vec::new();
        if let Some(t) = r.kind.code() {
            tests.push((Vec::new(), 2, t as i32));
        }
        if r.access & ALL_ACCESS != ALL_ACCESS {
            // Asked for something outside the rule's bits: r1 = access & !allowed, must be 0.
            // (r1, the context, is not needed once its fields are loaded.)
            tests.push((
                vec![
                    insn(ALU64_MOV_X, 1, 3, 0, 0),
                    insn(ALU64_AND_K, 1, 0, 0, i32::from(!r.access & ALL_ACCESS)),
                ],
                1,
                0,
            ));
        }
        if let Some(m) = r.major {
            tests.push((Vec::new(), 4, m as i32));
        }
        if let Some(m) = r.minor {
            tests.push((Vec::new(), 5, m as i32));
        }
        let len: usize = tests.iter().map(|(pre, _, _)| pre.len() + 1).sum::<usize>() + 2;
        let mut done = 0;
        for (pre, reg, val) in tests {
            done += pre.len() + 1;
            p.extend(pre);
            // Past the rest of this rule: what is left of its tests and its two-instruction
            // "allow" ending.
            let skip = (len - done) as i16;
            p.push(insn(JMP_JNE_K, reg, 0, skip, val));
        }
        p.push(insn(ALU64_MOV_K, 0, 0, 0, 1));
        p.push(insn(JMP_EXIT, 0, 0, 0, 0));
    }
    p.push(insn(ALU64_MOV_K, 0, 0, 0, 0));
    p.push(insn(JMP_EXIT, 0, 0, 0, 0));
    p
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot load the device program into the kernel (bpf BPF_PROG_LOAD): {source}{log}")]
    Load { source: std::io::Error, log: String },
    #[error("cannot {step} the device program at {path}: {source}")]
    Attach {
        step: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write `{value}` to {path}: {source}")]
    Write {
        path: String,
        value: String,
        source: std::io::Error,
    },
}

// bpf(2) commands, program and attach types, flags (include/uapi/linux/bpf.h).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
/// Several programs per cgroup, each of which must allow: a program the host's manager
/// (systemd) attached above the container stays in force below it.
const BPF_F_ALLOW_MULTI: u32 = 2;

/// `union bpf_attr` for BPF_PROG_LOAD (the fields up to `expected_attach_type`).
#[repr(C)]
#[derive(Default)]
struct LoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for BPF_PROG_ATTACH and BPF_PROG_DETACH.
#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// `union bpf_attr` for BPF_PROG_QUERY.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

/// `union bpf_attr` for BPF_PROG_GET_FD_BY_ID.
#[repr(C)]
#[derive(Default)]
struct GetFdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// bpf(2) with one of the attribute structs above.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: `attr` is a live, initialised #[repr(C)] prefix of `union bpf_attr` for `cmd`,
    // and its size is passed; the kernel zero-fills the fields beyond it, reads the struct, and
    // writes back only inside it (the query's counts). Pointers inside point to buffers that
    // outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Loads the program for `rules` (what `cargo bench --bench start` times as one start's cost
/// when nothing is cached).
pub fn load(rules: &[Rule]) -> Result<OwnedFd, DeviceError> {
    let prog = program(rules);
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 4096];
    let mut name = [0u8; 16];
    name[..9].copy_from_slice(b"berth_dev");
    let mut attr = LoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        prog_name: name,
        expected_attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    let fd = match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            // Again with the verifier's log, to say why.
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            let again = bpf(BPF_PROG_LOAD, &mut attr);
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0').trim();
            match again {
                Ok(fd) => fd,
                Err(_) => {
                    return Err(DeviceError::Load {
                        source: e,
                        log: if text.is_empty() {
                            String::new()
                        } else {
                            format!("; the verifier said: {text}")
                        },
                    });
                }
            }
        }
        Err(e) => {
            return Err(DeviceError::Load {
                source: e,
                log: String::new(),
            });
        }
    };
    // SAFETY: BPF_PROG_LOAD returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The program for `rules`, loaded once per process and rule set: every container with the
/// same rules shares it (a supervisor starts the same containers again and again).
fn cached(rules: &[Rule]) -> Result<Arc<OwnedFd>, DeviceError> {
    type Cache = Mutex<HashMap<Vec<Rule>, Arc<OwnedFd>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(fd) = map.get(rules) {
        return Ok(fd.clone());
    }
    let fd = Arc::new(load(rules)?);
    map.insert(rules.to_vec(), fd.clone());
    Ok(fd)
}

fn attach_err(step: &'static str, dir: &Path, source: std::io::Error) -> DeviceError {
    DeviceError::Attach {
        step,
        path: dir.display().to_string(),
        source,
    }
}

/// `union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The kernel's id of a loaded program (the second u32 of `struct bpf_prog_info`).
fn prog_id(prog: &OwnedFd) -> std::io::Result<u32> {
    let mut info = [0u32; 2];
    let mut a = InfoAttr {
        bpf_fd: prog.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a)?;
    Ok(info[1])
}

/// The ids of the device programs attached to the cgroup open at `cg`.
fn attached(cg: &OwnedFd, dir: &Path) -> Result<Vec<u32>, DeviceError> {
    let mut ids = [0u32; 64];
    let mut q = QueryAttr {
        target_fd: cg.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    bpf(BPF_PROG_QUERY, &mut q).map_err(|e| attach_err("query", dir, e))?;
    Ok(ids[..(q.prog_cnt as usize).min(ids.len())].to_vec())
}

/// How many device programs are attached to the cgroup v2 directory `dir` itself (`berth
/// inspect`-style checks and the isolation suite).
pub fn programs_at(dir: &Path) -> Result<usize, DeviceError> {
    let cg: OwnedFd = std::fs::File::open(dir)
        .map_err(|e| attach_err("open the cgroup for", dir, e))?
        .into();
    Ok(attached(&cg, dir)?.len())
}

/// Applies `policy` to the cgroup v2 directory `dir`: its program attached, any other device
/// program of the directory (left by an earlier run in a reused cgroup) detached after it, so
/// there is never a moment without one. `allow_all` detaches them all.
pub fn apply_v2(dir: &Path, policy: &Policy) -> Result<(), DeviceError> {
    let cg: OwnedFd = std::fs::File::open(dir)
        .map_err(|e| attach_err("open the cgroup for", dir, e))?
        .into();
    let before = attached(&cg, dir)?;
    let mut ours = None;
    if !policy.allow_all {
        let prog = cached(&policy.rules())?;
        let id = prog_id(&prog).map_err(|e| attach_err("identify", dir, e))?;
        // A cgroup kept from the container's previous run (a restart) may hold this very
        // program already: the kernel refuses to attach a program twice (EINVAL).
        if !before.contains(&id) {
            let mut a = AttachAttr {
                target_fd: cg.as_raw_fd() as u32,
                attach_bpf_fd: prog.as_raw_fd() as u32,
                attach_type: BPF_CGROUP_DEVICE,
                attach_flags: BPF_F_ALLOW_MULTI,
                ..Default::default()
            };
            bpf(BPF_PROG_ATTACH, &mut a).map_err(|e| attach_err("attach", dir, e))?;
        }
        ours = Some(id);
    }
    for id in before.into_iter().filter(|id| Some(*id) != ours) {
        let mut g = GetFdAttr {
            prog_id: id,
            ..Default::default()
        };
        let Ok(fd) = bpf(BPF_PROG_GET_FD_BY_ID, &mut g) else {
            continue; // gone meanwhile
        };
        // SAFETY: BPF_PROG_GET_FD_BY_ID returned a new descriptor that nothing else owns.
        let old = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut d = AttachAttr {
            target_fd: cg.as_raw_fd() as u32,
            attach_bpf_fd: old.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            ..Default::default()
        };
        match bpf(BPF_PROG_DETACH, &mut d) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {} // detached meanwhile
            Err(e) => return Err(attach_err("detach an old", dir, e)),
        }
    }
    Ok(())
}

/// Applies `policy` to the cgroup v1 `devices` directory `dir`: `a` denied (which empties its
/// list), then each rule allowed; `allow_all` allows `a`.
pub fn apply_v1(dir: &Path, policy: &Policy) -> Result<(), DeviceError> {
    let write = |file: &str, value: &str| -> Result<(), DeviceError> {
        let path = dir.join(file);
        std::fs::write(&path, value).map_err(|e| DeviceError::Write {
            path: path.display().to_string(),
            value: value.to_string(),
            source: e,
        })
    };
    if policy.allow_all {
        return write("devices.allow", "a");
    }
    write("devices.deny", "a")?;
    for r in policy.rules() {
        write("devices.allow", &r.v1_line())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program as the kernel would, for the instructions `program` emits.
    fn run(p: &[Insn], kind: Kind, major: u32, minor: u32, access: u8) -> u64 {
        let ctx = [
            (u32::from(access) << 16) | kind.code().unwrap_or(0),
            major,
            minor,
        ];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = (usize::from(i.regs & 0xf), usize::from(i.regs >> 4));
            pc += 1;
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(src, 1, "loads come from the context");
                    r[dst] = u64::from(ctx[(i.off / 4) as usize]);
                }
                ALU64_MOV_X => r[dst] = r[src],
                ALU64_MOV_K => r[dst] = i.imm as i64 as u64,
                ALU64_AND_K => r[dst] &= i.imm as i64 as u64,
                ALU64_RSH_K => r[dst] >>= i.imm,
                JMP_JNE_K => {
                    if r[dst] != i.imm as i64 as u64 {
                        pc = (pc as isize + isize::from(i.off)) as usize;
                    }
                }
                JMP_EXIT => return r[0],
                c => panic!("unknown opcode {c:#x}"),
            }
            assert!(pc < p.len(), "ran off the end");
        }
    }

    fn check(policy: &Policy) {
        let p = program(&policy.rules());
        for kind in [Kind::Block, Kind::Char] {
            for major in [0, 1, 5, 7, 8, 136, 254, 4095] {
                for minor in [0, 1, 2, 3, 5, 7, 8, 9, 11, 100] {
                    for access in 1..=7u8 {
                        let want = policy.allows(kind, major, minor, access);
                        let got = run(&p, kind, major, minor, access) == 1;
                        assert_eq!(
                            got, want,
                            "{kind:?} {major}:{minor} access {access} under {policy:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_program_decides_as_the_rules_do() {
        check(&Policy::default());
        let extra = [
            "b 254:0 r",
            "c 10:200 rwm",
            "a 7:* rw",
            "c *:11 w",
            "b 8:* m",
        ]
        .map(|s| parse_rule(s).unwrap());
        check(&Policy {
            allow_all: false,
            extra: extra.to_vec(),
        });
        for r in extra {
            check(&Policy {
                allow_all: false,
                extra: vec![r],
            });
        }
    }

    #[test]
    fn the_default_list_opens_only_the_usual_nodes() {
        let d = Policy::default();
        // mknod of anything, but no open of a disk or /dev/kmsg.
        assert!(d.allows(Kind::Block, 254, 0, MKNOD));
        assert!(!d.allows(Kind::Block, 254, 0, READ));
        assert!(!d.allows(Kind::Block, 254, 0, WRITE | MKNOD));
        assert!(!d.allows(Kind::Char, 1, 11, READ));
        assert!(d.allows(Kind::Char, 1, 3, READ | WRITE));
        assert!(d.allows(Kind::Char, 136, 4, READ | WRITE));
        let p = program(&d.rules());
        assert_eq!(run(&p, Kind::Block, 254, 0, READ), 0);
        assert_eq!(run(&p, Kind::Block, 254, 0, MKNOD), 1);
        // A device's read-only rule: reading yes, writing or reading and writing no.
        let ro = Policy {
            allow_all: false,
            extra: vec![parse_rule("b 254:0 r").unwrap()],
        };
        let p = program(&ro.rules());
        assert_eq!(run(&p, Kind::Block, 254, 0, READ), 1);
        assert_eq!(run(&p, Kind::Block, 254, 0, WRITE), 0);
        assert_eq!(run(&p, Kind::Block, 254, 0, READ | WRITE), 0);
        assert_eq!(run(&p, Kind::Block, 254, 1, READ), 0);
    }

    #[test]
    fn rules_parse_and_print_as_cgroup_v1_writes_them() {
        let r = parse_rule("c 1:3 mr").unwrap();
        assert_eq!(r.v1_line(), "c 1:3 rm");
        assert_eq!(parse_rule("a 7:* rmw").unwrap().v1_line(), "a 7:* rwm");
        assert_eq!(parse_rule("b *:* m").unwrap().v1_line(), "b *:* m");
        for bad in [
            "",
            "x 1:3 r",
            "c 1 r",
            "c 1:3",
            "c 1:3 rx",
            "c a:3 r",
            "c 1:3 r w",
        ] {
            assert!(parse_rule(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_access("rw").unwrap(), READ | WRITE);
        assert!(parse_access("").is_err());
        assert!(parse_access("rq").is_err());
        let lines: Vec<String> = Policy::default()
            .rules()
            .iter()
            .map(Rule::v1_line)
            .collect();
        assert_eq!(lines[0], "c *:* m");
        assert_eq!(lines[2], "c 1:3 rwm");
        assert_eq!(lines[10], "c 136:* rwm");
    }

    #[test]
    fn privileged_allows_everything_and_needs_no_program() {
        let p = Policy {
            allow_all: true,
            extra: Vec::new(),
        };
        assert!(p.rules().is_empty());
        assert!(p.allows(Kind::Block, 8, 0, READ | WRITE | MKNOD));
    }
}
