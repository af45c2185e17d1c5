// berth loads project files into many small allocations (a node per YAML value, a JSON value
// per node); mimalloc makes the load of a 1,000-service file about a third faster than glibc's
// allocator (see benches/core.rs and the README).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_allow_thp` (libmimalloc-sys names no constant for it).
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 37;

fn main() {
    // Without this, mimalloc asks for transparent huge pages, and every thread's first
    // allocation faults in and zeroes 2 MiB: measured, that was 60 % of the CPU time of
    // `down` of 50 containers (each blocking-pool thread gets its own heap).
    // The option stops new requests; the prctl covers the arena mimalloc reserved (and
    // advised) before main. The flag is inherited, so the service process of a container
    // clears it again before its exec (runtime/linux/setup.rs).
    // SAFETY: mi_option_set only stores an option value; no allocation is in flight here.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 0) };
    let _ = nix::sys::prctl::set_thp_disable(true);
    // The container setup process is this binary re-executed; it must run before anything
    // else (clap, threads) so it stays single-threaded.
    if let Some(code) = berth::runtime::linux::dispatch() {
        std::process::exit(code);
    }
    std::process::exit(berth::cli::main());
}
