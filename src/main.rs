// berth loads project files into many small allocations (a node per YAML value, a JSON value
// per node); mimalloc makes the load of a 1,000-service file about a third faster than glibc's
// allocator (see benches/core.rs and the README).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // The container setup process is this binary re-executed; it must run before anything
    // else (clap, threads) so it stays single-threaded.
    if let Some(code) = berth::runtime::linux::dispatch() {
        std::process::exit(code);
    }
    std::process::exit(berth::cli::main());
}
