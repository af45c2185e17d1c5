//! Builds berth-init (init/main.rs), the program every container runs as its PID 1 once set up,
//! and berth-idle (init/idle.rs), what an idle supervisor waits in, and leaves them in OUT_DIR
//! for `include_bytes!`. Each is a `no_std`, libc-free static binary of
//! about 13 KB, compiled here with the same rustc rather than as a workspace member: cargo cannot
//! yet embed one package's binary in another (artifact dependencies are unstable), and the
//! program must be built with panic=abort and no start files, which berth's own profile is not.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=init");
    // berth itself is position-dependent: a PIE relocates 600 KiB of pointer tables at every
    // start, private dirty memory in each supervisor (docs/decisions.md, "The runtime").
    println!("cargo:rustc-link-arg-bins=-no-pie");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    // berth-init: each container's PID 1. berth-idle: an idle supervisor (init/idle.rs).
    for (name, src) in [
        ("berth-init", "init/main.rs"),
        ("berth-idle", "init/idle.rs"),
    ] {
        let exe = out.join(name);
        let mut cmd = Command::new(&rustc);
        cmd.args([
            "--edition=2024",
            "--crate-type=bin",
            "--crate-name",
            &name.replace('-', "_"),
            "--target",
            &target,
            "-C",
            "opt-level=s",
            "-C",
            "panic=abort",
            "-C",
            "codegen-units=1",
            "-C",
            "relocation-model=static",
            "-C",
            "target-feature=+crt-static",
            "-C",
            "strip=symbols",
            "-C",
            "link-arg=-nostartfiles",
            "-C",
            "link-arg=-nostdlib",
            "-C",
            "link-arg=-static",
            "-C",
            "link-arg=-Wl,--build-id=none",
            "-o",
        ]);
        cmd.arg(&exe).arg(src);
        // Not the build script's own flags (coverage or sanitizer options meant for berth).
        cmd.env_remove("CARGO_ENCODED_RUSTFLAGS");
        let status = cmd.status().expect("run rustc for berth's static programs");
        assert!(status.success(), "building {name} ({src}) failed");
    }
}
