//! Builds berth-init (init/main.rs), the program every container runs as its PID 1 once set up,
//! and leaves it in OUT_DIR for `include_bytes!`. It is a `no_std`, libc-free static binary of
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
    let exe = out.join("berth-init");
    let mut cmd = Command::new(rustc);
    cmd.args([
        "--edition=2024",
        "--crate-type=bin",
        "--crate-name=berth_init",
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
    cmd.arg(&exe).arg("init/main.rs");
    // Not the build script's own flags (coverage or sanitizer options meant for berth).
    cmd.env_remove("CARGO_ENCODED_RUSTFLAGS");
    let status = cmd.status().expect("run rustc for berth-init");
    assert!(
        status.success(),
        "building berth-init (init/main.rs) failed"
    );
}
