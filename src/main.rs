// berth loads project files into many small allocations (a node per YAML value, a JSON value
// per node); mimalloc makes the load of a 1,000-service file about a third faster than glibc's
// allocator (see benches/core.rs and the README).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(berth::cli::main());
}
