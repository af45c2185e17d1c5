//! Load + validate + graph + plan of a generated 1,000-service project.
//!
//! `cargo bench --bench core`. The README quotes the `full pipeline` figure.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;

use berth::plan::{Observed, ObservedContainer, State, config_hash, diff};
use berth::spec::LoadOptions;
use criterion::{Criterion, criterion_group, criterion_main};

// The same allocator as the berth binary, so the figure is the one users get.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A realistic file: every service has an image, environment, a published port, a healthcheck,
/// limits, a volume, two networks, and depends on up to three earlier services.
pub fn generate(n: usize) -> String {
    let mut s = String::from(
        "name: bench\nx-common: &common\n  restart: unless-stopped\n  labels: {team: platform}\nservices:\n",
    );
    for i in 0..n {
        let _ = write!(
            s,
            "  svc{i}:\n    <<: *common\n    image: registry.example.com/app/svc{i}:1.{i}\n    command: [\"/bin/app\", \"--port\", \"8080\", \"--id\", \"{i}\"]\n    environment:\n      SERVICE_ID: \"{i}\"\n      LOG_LEVEL: ${{LOG_LEVEL:-info}}\n      DB_URL: postgres://db{}/app\n    ports:\n      - \"{}:8080\"\n    healthcheck:\n      test: [\"CMD-SHELL\", \"wget -qO- localhost:8080/health\"]\n      interval: 10s\n      timeout: 2s\n      retries: 3\n    mem_limit: 256m\n    cpus: \"0.25\"\n    pids_limit: 128\n    volumes:\n      - data{i}:/var/lib/app\n    networks: [front, back]\n",
            i % 10,
            10000 + i
        );
        if i > 0 {
            s.push_str("    depends_on:\n");
            let mut deps = vec![i - 1, i / 2, i / 3];
            deps.sort_unstable();
            deps.dedup();
            for d in deps {
                if d < i {
                    let _ = writeln!(s, "      svc{d}: {{condition: service_started}}");
                }
            }
        }
    }
    s.push_str("networks:\n  front: {}\n  back: {internal: true}\nvolumes:\n");
    for i in 0..n {
        let _ = writeln!(s, "  data{i}: {{}}");
    }
    s
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = generate(1000);
    std::fs::write(dir.path().join("compose.yaml"), &text).expect("write");
    let opts = LoadOptions {
        project_directory: Some(dir.path().to_path_buf()),
        environ: BTreeMap::new(),
        cwd: dir.path().to_path_buf(),
        ..LoadOptions::default()
    };
    let p = berth::load_project(&opts).expect("generated file loads");
    let observed = Observed {
        containers: p
            .loaded
            .project
            .services
            .iter()
            .map(|(n, s)| ObservedContainer {
                name: format!("bench-{n}-1"),
                service: n.clone(),
                index: 1,
                config_hash: config_hash(s, Path::new(dir.path())),
                state: State::Running,
                oneoff: false,
                pid: None,
            })
            .collect(),
    };
    let mut g = c.benchmark_group("1000 services");
    g.sample_size(20);
    g.bench_function("full pipeline (load, validate, graph, plan)", |b| {
        b.iter(|| {
            let p = berth::load_project(black_box(&opts)).expect("load");
            let plan = diff(
                &p.loaded.project,
                &p.loaded.project_dir,
                &p.graph,
                &observed,
            );
            black_box(plan)
        })
    });
    g.bench_function("plan only (converged)", |b| {
        b.iter(|| {
            diff(
                &p.loaded.project,
                &p.loaded.project_dir,
                &p.graph,
                black_box(&observed),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
