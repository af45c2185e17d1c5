//! `berth up`: converge the host toward the file, then either stream the logs in the
//! foreground (Ctrl-C stops the project; a second Ctrl-C kills it) or, with `-d`, leave the
//! project's supervisor running in the background. Also the hidden `__supervise` verb that is
//! that supervisor.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use super::Global;
use super::logs::{Style, follow};
use super::project::{Display, Progress, load_for, runtime, stop_supervisor, tokio};
use crate::net::ports;
use crate::plan::{Action, State, diff};
use crate::reconcile::idle;
use crate::reconcile::supervisor::{Supervisor, load_in_supervisor, log};
use crate::reconcile::{Options, Target, apply, teardown};
use crate::runtime::{Inspect, Runtime};
use crate::state::{ProjectState, Status};

/// `berth create`: `up --no-start` with the flags Compose's `create` takes.
#[derive(Debug, Args, Default, Clone)]
pub struct CreateArgs {
    /// Build images before creating containers
    #[arg(long)]
    pub build: bool,
    /// Don't build an image, even if it is missing
    #[arg(long, conflicts_with = "build")]
    pub no_build: bool,
    /// Recreate containers even if their configuration has not changed
    #[arg(long, conflicts_with = "no_recreate")]
    pub force_recreate: bool,
    /// Don't recreate containers that exist
    #[arg(long)]
    pub no_recreate: bool,
    /// Remove containers of services no longer in the file
    #[arg(long)]
    pub remove_orphans: bool,
    /// Set the number of replicas of a service
    #[arg(long, value_name = "SERVICE=N")]
    pub scale: Vec<String>,
    /// How to show progress
    #[arg(long, value_enum, default_value_t = Progress::Auto)]
    pub progress: Progress,
    /// Services (default: all)
    pub services: Vec<String>,
}

impl From<&CreateArgs> for UpArgs {
    fn from(c: &CreateArgs) -> UpArgs {
        UpArgs {
            build: c.build,
            no_build: c.no_build,
            force_recreate: c.force_recreate,
            no_recreate: c.no_recreate,
            remove_orphans: c.remove_orphans,
            scale: c.scale.clone(),
            progress: c.progress,
            services: c.services.clone(),
            no_start: true,
            ..UpArgs::default()
        }
    }
}

#[derive(Debug, Args, Default, Clone)]
pub struct UpArgs {
    /// Detached: leave the project running under its supervisor and return
    #[arg(short, long)]
    pub detach: bool,
    /// Build images before starting containers (else only the missing ones are built)
    #[arg(long)]
    pub build: bool,
    /// Don't build images, even missing ones
    #[arg(long, conflicts_with = "build")]
    pub no_build: bool,
    /// Bring the project up detached, then act on file changes (develop.watch), as `berth watch`
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Wait until services are running or healthy (implies -d)
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds
    #[arg(long, value_name = "SECONDS")]
    pub wait_timeout: Option<u64>,
    /// Recreate containers even if their configuration did not change
    #[arg(long, conflicts_with = "no_recreate")]
    pub force_recreate: bool,
    /// Leave existing containers as they are, even if their configuration changed
    #[arg(long)]
    pub no_recreate: bool,
    /// Don't start the services the named ones depend on
    #[arg(long)]
    pub no_deps: bool,
    /// Create, don't start
    #[arg(long)]
    pub no_start: bool,
    /// Replicas of a service, overriding `scale` in the file (SERVICE=N)
    #[arg(long, value_name = "SERVICE=N")]
    pub scale: Vec<String>,
    /// Remove containers of services no longer in the file
    #[arg(long)]
    pub remove_orphans: bool,
    /// Stop grace period in seconds for containers that are replaced
    #[arg(short, long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// Progress output
    #[arg(long, value_enum, default_value_t = Progress::Auto)]
    pub progress: Progress,
    /// No colours in the log
    #[arg(long)]
    pub no_color: bool,
    /// Services (default: all)
    pub services: Vec<String>,
}

/// Writes what `up` learnt of the health of the containers it started: healthy where it
/// waited for it, unknown (the supervisor probes) for every other container it (re)started.
fn record_health(
    st: &ProjectState,
    plan: &crate::plan::Plan,
    healthy: &BTreeSet<String>,
    failures: &[crate::reconcile::Failure],
) {
    use crate::reconcile::health::Status as Health;
    let mut status = st.status();
    for act in &plan.actions {
        if let Action::Start { name, .. }
        | Action::Recreate { name, .. }
        | Action::Restart { name, .. } = act
        {
            status.containers.entry(name.clone()).or_default().health = None;
        }
    }
    for name in healthy {
        status.containers.entry(name.clone()).or_default().health = Some(Health::Healthy);
    }
    for f in failures {
        if let Some(c) = &f.container
            && f.step == "health check"
            && f.message.starts_with("is unhealthy")
        {
            status.containers.entry(c.clone()).or_default().health = Some(Health::Unhealthy);
        }
    }
    let _ = st.write_status(&status);
}

fn apply_scale(target: &mut Target, scale: &[String]) -> anyhow::Result<()> {
    for s in scale {
        let Some((svc, n)) = s.split_once('=') else {
            bail!("--scale {s}: expected SERVICE=N");
        };
        let n: u32 = n
            .parse()
            .with_context(|| format!("--scale {s}: {n} is not a number"))?;
        let Some(def) = target.project.services.get_mut(svc) else {
            bail!("--scale {s}: no service {svc:?} in the project");
        };
        if n > 1 && def.container_name.is_some() {
            bail!(
                "--scale {s}: service {svc} sets container_name, so it can have only one container"
            );
        }
        def.scale = Some(n);
    }
    Ok(())
}

pub fn run(g: &Global, a: &UpArgs) -> anyhow::Result<i32> {
    if a.watch {
        let mut up = a.clone();
        up.watch = false;
        up.detach = true;
        let code = run(g, &up)?;
        if code != 0 {
            return Ok(code);
        }
        return super::watch::run(
            g,
            &super::watch::WatchArgs {
                services: a.services.clone(),
                no_up: true,
            },
        );
    }
    let mut l = load_for(g, &a.services)?;
    apply_scale(&mut l.target, &a.scale)?;
    for s in &a.services {
        if !l.target.project.services.contains_key(s) {
            bail!("no such service: {s}");
        }
    }
    // Which services this `up` is about: the named ones and, unless --no-deps, what they need.
    let scope: Option<BTreeSet<String>> = (!a.services.is_empty()).then(|| {
        if a.no_deps {
            a.services.iter().cloned().collect()
        } else {
            l.target.graph.with_dependencies(&a.services)
        }
    });
    let in_scope = |s: &str| scope.as_ref().is_none_or(|sc| sc.contains(s));

    // A provider's service (`provider:`) is a plugin's to run, and berth has none: said before
    // anything changes, with where the file asks for it.
    let loc = crate::spec::validate::Locator { root: &l.tree };
    for (name, svc) in &l.target.project.services {
        if let Some(p) = svc.provider.as_ref().filter(|_| in_scope(name)) {
            let (pos, path) = loc.find(name, "provider", None);
            bail!(
                "{pos}: {path}: `{name}` is run by the provider `{}`, and berth runs no providers (Compose runs them with a plugin); start the other services by name (`berth up SERVICE...`) or move `{name}` to a profile",
                p.kind
            );
        }
    }

    if !nix::unistd::Uid::effective().is_root() {
        bail!(
            "berth runs containers with the kernel's namespaces and cgroups, which needs root: run `sudo berth up`"
        );
    }
    let rt = runtime()?;
    let tk = tokio()?;

    // Published ports are bound before anything else happens, so a port that is taken fails
    // `up` with nothing changed. Those the running supervisor serves are bound again once it
    // has stopped and let them go.
    crate::disk::private::check_sizes(&super::ctx::state_root(), &l.target.project)?;
    build_needed(&rt, &l.target, a)?;
    pull_missing(&rt, &l.target.project, a.progress)?;
    for (name, svc) in &l.target.project.services {
        if svc
            .volumes
            .iter()
            .any(|m| m.bind.as_ref().is_some_and(|b| b.selinux.is_some()))
        {
            eprintln!(
                "berth: warning: services.{name}.volumes: the SELinux relabelling option (:z, :Z) is ignored; berth does not manage SELinux labels"
            );
        }
    }
    let bound = {
        let locate = |s: &str, p: &crate::spec::model::Port| l.port_at(s, p);
        ports::check(&l.target.project, &locate)?;
        let (wants, warnings) = ports::wants(&l.target.project, &locate);
        for w in warnings {
            eprintln!("berth: warning: {w}");
        }
        let prev = ports::recorded(l.state.dir());
        let alive = l.state.supervisor().is_some();
        let (held, fresh): (Vec<ports::Want>, Vec<ports::Want>) = wants
            .into_iter()
            .filter(|w| in_scope(&w.service) || prev.iter().any(|b| b.service == w.service))
            .partition(|w| alive && prev.iter().any(|b| b.serves(w)));
        let mut bound = ports::claim(&fresh, &prev, &locate)?;
        stop_supervisor(&l.state);
        bound.extend(ports::claim(&held, &prev, &locate)?);
        bound
    };
    let lock = l.state.lock(Duration::from_secs(60))?;
    l.state.write_record(&l.record)?;
    let bindings: Vec<ports::Binding> = bound.iter().map(|b| b.binding.clone()).collect();
    ports::record(l.state.dir(), &bindings).with_context(|| {
        format!(
            "recording the published ports in {}",
            l.state.dir().display()
        )
    })?;
    let target = Arc::new(l.target);
    let observed = tk.block_on(rt.observe(&target.project.name))?;
    let mut plan = diff(&target.project, &target.dir, &target.graph, &observed);

    let mut orphans = BTreeSet::new();
    plan.actions.retain(|act| {
        let s = act.service();
        if !target.project.services.contains_key(s) {
            orphans.insert(s.to_string());
            return a.remove_orphans;
        }
        if a.no_recreate && matches!(act, Action::Recreate { .. }) {
            return false;
        }
        in_scope(s)
    });
    if !orphans.is_empty() && !a.remove_orphans {
        eprintln!(
            "berth: warning: containers of services no longer in the file: {}; `berth up --remove-orphans` removes them",
            orphans.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    if a.force_recreate {
        for c in &observed.containers {
            if !target.project.services.contains_key(&c.service) || !in_scope(&c.service) {
                continue;
            }
            let already = plan.actions.iter().any(|act| {
                matches!(act, Action::Recreate { name, .. } | Action::Remove { name, .. } if *name == c.name)
            });
            if already {
                continue;
            }
            plan.actions
                .retain(|act| !matches!(act, Action::Start { name, .. } if *name == c.name));
            let hash = crate::plan::service_hash(&target.project, &c.service, &target.dir);
            plan.actions.push(Action::Recreate {
                service: c.service.clone(),
                index: c.index,
                name: c.name.clone(),
                config_hash: hash,
            });
        }
    }
    // The user asked for these to run again.
    for act in &plan.actions {
        if let Action::Start { name, .. } | Action::Recreate { name, .. } = act {
            let _ = l.state.set_stopped(name, false);
        }
    }

    let detach = a.detach || a.wait;
    let opts = Options {
        timeout: a.timeout.map(Duration::from_secs),
        no_start: a.no_start,
        wait: a.wait,
    };
    let display = Display::new(a.progress);
    // The health each container reached while `up` waited on it, for `ps` and the supervisor.
    let healthy = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let sink: crate::reconcile::Sink = {
        let inner = display.sink.clone();
        let healthy = healthy.clone();
        Arc::new(move |e: crate::reconcile::Event| {
            if e.phase == crate::reconcile::Phase::Healthy {
                healthy
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(e.container.clone());
            }
            inner(e)
        })
    };
    let pname = target.project.name.clone();
    let width = target
        .project
        .services
        .iter()
        .flat_map(|(s, d)| {
            let pname = pname.clone();
            (1..=d.replicas()).map(move |i| crate::plan::container_name(&pname, s, d, i).len())
        })
        .max()
        .unwrap_or(0);
    let style = Style {
        color: !a.no_color
            && std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none(),
        prefix: true,
        timestamps: false,
        width,
    };
    // In the foreground, each container's output streams from its first byte, as Compose
    // attaches to each container as it starts: a job's output or a crash at start is on the
    // screen, not only what comes once everything is up.
    let (logs_stop, logs_rx) = tokio::sync::watch::channel(false);
    let logs = (!detach && !a.no_start).then(|| {
        let mut r = logs_rx.clone();
        tk.spawn(follow(
            rt.clone(),
            target.project.name.clone(),
            Vec::new(),
            style,
            async move {
                let _ = r.wait_for(|s| *s).await;
            },
        ))
    });
    let converge = apply(
        rt.clone(),
        target.clone(),
        &plan,
        &observed.containers,
        opts.clone(),
        sink,
    );
    let failures = if let Some(secs) = a.wait_timeout.filter(|_| a.wait) {
        match tk.block_on(tokio::time::timeout(Duration::from_secs(secs), converge)) {
            Ok(f) => f,
            Err(_) => {
                display.finish();
                spawn_supervisor(&l.state, lock, bound)?;
                bail!("--wait-timeout: the project was not ready after {secs}s");
            }
        }
    } else {
        tk.block_on(converge)
    };
    display.finish();
    record_health(
        &l.state,
        &plan,
        &healthy.lock().unwrap_or_else(|e| e.into_inner()),
        &failures,
    );
    for f in &failures {
        eprintln!("berth: {f}");
    }
    let mut code = i32::from(!failures.is_empty());

    // `up --no-start` (and `create`): the containers exist and nothing more is started;
    // the supervisor (stopped above) comes back for what runs already and for what `berth
    // start` starts later (restart policies, health checks, published ports). It leaves
    // created containers alone.
    if a.no_start {
        spawn_supervisor(&l.state, lock, bound)?;
        return Ok(code);
    }

    if detach {
        if a.wait && code == 0 {
            // A one-shot job is done when it exited 0 (Compose reports such a job as failed);
            // any other container that already ended, ended badly.
            let now = tk.block_on(rt.observe(&target.project.name))?;
            for c in &now.containers {
                if !in_scope(&c.service) {
                    continue;
                }
                match c.state {
                    State::Exited(0) | State::Running | State::Created => {}
                    s => {
                        eprintln!("berth: container {} is not running: {s:?}", c.name);
                        code = 1;
                    }
                }
            }
        }
        spawn_supervisor(&l.state, lock, bound)?;
        return Ok(code);
    }

    // Foreground: the supervisor runs in this process, the logs stream, Ctrl-C stops it all.
    let record = l.state.record()?;
    let st = l.state.clone();
    let project = target.project.name.clone();
    tk.block_on(async {
        // Its lines go between the services' output: bare, in Compose's shape.
        crate::reconcile::supervisor::log_bare();
        let sup = Supervisor::new(rt.clone(), st.clone(), record, target.clone()).with_ports(bound);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut r1 = stop_rx.clone();
        let sup_task = tokio::spawn(sup.run(async move {
            let _ = r1.wait_for(|s| *s).await;
        }));
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("Gracefully stopping... (press Ctrl+C again to force)");
        let _ = stop_tx.send(true);
        let _ = logs_stop.send(true);
        let _ = sup_task.await;
        if let Some(logs) = logs {
            let _ = logs.await;
        }
        let containers = rt.observe(&project).await.map(|o| o.containers).unwrap_or_default();
        let display = Display::new(a.progress);
        let stopping = teardown(
            rt.clone(),
            target.clone(),
            containers,
            false,
            opts.clone(),
            display.sink.clone(),
        );
        tokio::pin!(stopping);
        let failures = tokio::select! {
            f = &mut stopping => f,
            _ = tokio::signal::ctrl_c() => {
                // A second Ctrl-C: no more grace.
                let containers = rt.observe(&project).await.map(|o| o.containers).unwrap_or_default();
                let kill = Options { timeout: Some(Duration::ZERO), ..Options::default() };
                teardown(rt.clone(), target.clone(), containers, false, kill, display.sink.clone()).await
            }
        };
        display.finish();
        for f in failures {
            eprintln!("berth: {f}");
        }
    });
    drop(lock);
    Ok(code)
}

/// Builds the images of the services with `build:`: all of them with `--build` (or
/// `pull_policy: build`), else those the store lacks; none with `--no-build`.
fn build_needed(
    rt: &std::sync::Arc<super::ctx::Engine>,
    target: &crate::reconcile::Target,
    a: &UpArgs,
) -> anyhow::Result<()> {
    if a.no_build {
        return Ok(());
    }
    for (name, svc) in &target.project.services {
        if svc.build.is_none() || !(a.services.is_empty() || a.services.contains(name)) {
            continue;
        }
        let have = svc
            .image
            .as_deref()
            .is_some_and(|i| rt.images().resolve(i).is_ok());
        if have && !a.build && svc.pull_policy.as_deref() != Some("build") {
            continue;
        }
        super::build::build_service(
            rt,
            &target.project,
            &target.dir,
            name,
            &Default::default(),
            false,
            a.progress,
        )?;
    }
    Ok(())
}

/// Pulls the registry images of the project that the store lacks (`pull_policy: missing`,
/// the default) or that the file says to pull each time (`always`), before anything is made.
fn pull_missing(
    rt: &super::ctx::Engine,
    project: &crate::spec::model::Project,
    progress: Progress,
) -> anyhow::Result<()> {
    let mut done = BTreeSet::new();
    for svc in project.services.values() {
        let Some(image) = svc.image.as_deref().filter(|i| *i != "host") else {
            continue;
        };
        // Built here (`build_needed`), not pulled.
        if svc.build.is_some() {
            continue;
        }
        let policy = svc.pull_policy.as_deref().unwrap_or("missing");
        let have = rt.images().resolve(image).is_ok();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = crate::image::registry::last_pull(rt.images(), image);
        let want = crate::image::registry::pull_due(policy, have, last, now)
            .map_err(|e| anyhow::anyhow!("image {image}: {e}"))?;
        if !want || !done.insert(image.to_string()) {
            if !have && policy == "never" {
                bail!("image {image} is not in the store and its pull_policy is never");
            }
            continue;
        }
        let view = super::pullview::PullView::new(progress, super::pullview::Stream::Stderr);
        view.say(&format!(" Image {image}  Pulling"));
        let pulled = rt.images().pull(image, &|e| view.event(e));
        view.finish(&format!(
            " Image {image}  {}",
            if pulled.is_ok() { "Pulled" } else { "Error" }
        ));
        pulled?;
    }
    Ok(())
}

/// Starts the project's supervisor in the background, handing it this command's lock (the
/// open lock file is inherited, so the project is never unlocked in between).
fn spawn_supervisor(
    st: &ProjectState,
    lock: crate::state::Lock,
    ports: Vec<ports::Bound>,
) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("finding the berth binary")?;
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(st.log_path())
        .with_context(|| format!("opening {}", st.log_path().display()))?;
    let fd = lock.fd.as_raw_fd();
    // The supervisor writes one byte here once it is ready, and the pipe closes if it fails.
    let (ready_r, ready_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("creating a pipe")?;
    let rfd = ready_w.as_raw_fd();
    // The lock's, the pipe's and the published ports' descriptors must survive exec in the
    // child. The ports go in the order `ports.json` lists them.
    let port_fds: Vec<i32> = ports.iter().map(|b| b.socket.as_raw_fd()).collect();
    let inherited = [lock.fd.as_fd(), ready_w.as_fd()]
        .into_iter()
        .chain(ports.iter().map(|b| b.socket.as_fd()));
    for f in inherited {
        nix::fcntl::fcntl(
            f,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .context("passing the project lock and ports to the supervisor")?;
    }
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("-p")
        .arg(&st.name)
        .arg("__supervise")
        .arg("--lock-fd")
        .arg(fd.to_string())
        .arg("--ready-fd")
        .arg(rfd.to_string())
        .args(
            port_fds
                .iter()
                .flat_map(|f| ["--port-fd".to_string(), f.to_string()]),
        )
        // mimalloc commits its first arena eagerly; for a process that lives as long as the
        // project, that is ~8 MiB of memory it never uses (measured with bench/updown.sh).
        .env("MIMALLOC_ARENA_EAGER_COMMIT", "0")
        .env("MIMALLOC_PURGE_DELAY", "0")
        .stdin(std::process::Stdio::null())
        .stdout(logf.try_clone().context("log file")?)
        .stderr(logf);
    // SAFETY: setsid and close_range are async-signal-safe, and exec follows at once. The
    // child leaves the terminal's session so a Ctrl-C or hangup there does not reach the
    // supervisor, and it inherits no descriptor but the lock, the pipe and the ports (a
    // long-lived process must not hold whatever its caller had open: a build tool's lock, a
    // pipe someone waits on).
    let mut keep: Vec<libc::c_uint> = [fd, rfd]
        .into_iter()
        .chain(port_fds.iter().copied())
        .map(|f| f as libc::c_uint)
        .collect();
    keep.sort_unstable();
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            let cloexec = libc::CLOSE_RANGE_CLOEXEC as libc::c_int;
            let mut from: libc::c_uint = 3;
            for &k in &keep {
                if k > from {
                    libc::syscall(libc::SYS_close_range, from, k - 1, cloexec);
                }
                from = from.max(k + 1);
            }
            libc::syscall(libc::SYS_close_range, from, libc::c_uint::MAX, cloexec);
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting the supervisor")?;
    drop(ready_w);
    drop(ports);
    st.write_supervisor(child.id() as i32)?;
    drop(lock);
    await_ready(st, ready_r)
}

/// Waits for the supervisor's byte. A supervisor that exits first failed: its log says why.
/// One that is only slow (a loaded host) is left to come up on its own after a while.
fn await_ready(st: &ProjectState, r: OwnedFd) -> anyhow::Result<()> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(r.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(10_000u16)) {
        Ok(0) => {
            eprintln!(
                "berth: the supervisor is slow to start (its log: {})",
                st.log_path().display()
            );
            return Ok(());
        }
        Ok(_) => {}
        Err(e) => return Err(e).context("waiting for the supervisor"),
    }
    let mut b = [0u8; 1];
    match nix::unistd::read(&r, &mut b) {
        Ok(1) => Ok(()),
        _ => {
            let log = std::fs::read_to_string(st.log_path()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "the project's supervisor stopped as it started ({}):\n{}",
                st.log_path().display(),
                tail.join("\n")
            )
        }
    }
}

#[derive(Debug, Args)]
pub struct SuperviseArgs {
    /// The project lock, already held (inherited from `berth up -d`)
    #[arg(long)]
    pub lock_fd: Option<i32>,
    /// A pipe to write one byte to once ready (inherited from `berth up -d`)
    #[arg(long)]
    pub ready_fd: Option<i32>,
    /// A published port's bound socket, in the order of the project's ports.json (inherited)
    #[arg(long)]
    pub port_fd: Vec<i32>,
    /// What the supervisor handed over to itself before an idle spell (a memfd, inherited
    /// through berth-idle)
    #[arg(long)]
    pub resume_fd: Option<i32>,
}

/// How long a detached supervisor stays awake without work before it waits in berth-idle:
/// `BERTH_IDLE_AFTER_MS` (`off` never), 2 s by default. Never after berth-idle could not be
/// executed here (it then came back as berth, with BERTH_IDLE_FAILED set).
fn idle_after() -> Option<Duration> {
    if std::env::var_os("BERTH_IDLE_FAILED").is_some() {
        return None;
    }
    match std::env::var("BERTH_IDLE_AFTER_MS") {
        Ok(v) if v == "off" => None,
        Ok(v) => v.parse().ok().map(Duration::from_millis),
        Err(_) => Some(Duration::from_secs(2)),
    }
}

/// The supervisor's process: `berth -p NAME __supervise`.
pub fn supervise(g: &Global, a: &SuperviseArgs) -> anyhow::Result<i32> {
    let name = g
        .project_name
        .clone()
        .context("__supervise needs -p PROJECT")?;
    // Before any thread exists, so that every thread has them blocked (see idle::stop_set).
    idle::block_stop_signals();
    let st = ProjectState::new(&super::ctx::state_root(), &name);
    let record = st.record()?;
    let _lock = match a.lock_fd {
        // SAFETY: the descriptor was inherited from `berth up`, which handed it over for this
        // process alone; nothing else in this process owns it.
        Some(fd) => crate::state::Lock {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        },
        None => st.lock(Duration::from_secs(60))?,
    };
    // Inherited open across exec; nothing this process starts may hold it (an idle spell
    // passes it on explicitly).
    let _ = nix::fcntl::fcntl(
        &_lock.fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    // SAFETY: as for the lock: inherited for this process alone.
    let ready = a.ready_fd.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    let handoff = match a.resume_fd {
        Some(fd) => Some(idle::read_handoff(fd).context("resuming after an idle spell")?),
        None => None,
    };
    // The DNS listeners' sockets, inherited through berth-idle.
    let dns: Vec<(std::net::Ipv4Addr, OwnedFd)> = handoff
        .iter()
        .flat_map(|h| &h.dns)
        .filter_map(|&(gw, fd)| ports::adopt(fd).map(|s| (gw, s)))
        .collect();
    // The bindings of the sockets handed over: those of before the idle spell, or ports.json's
    // (as `berth up` bound them).
    let bindings = match &handoff {
        Some(h) => h.ports.clone(),
        None => ports::recorded(st.dir()),
    };
    let bound: Vec<ports::Bound> = bindings
        .into_iter()
        .zip(&a.port_fd)
        .filter_map(|(binding, &fd)| {
            ports::adopt(fd).map(|socket| ports::Bound { binding, socket })
        })
        .collect();
    if handoff.is_some() && idle::stop_pending() {
        // `down` (or a Ctrl-C) woke berth-idle: stop as a supervisor that was awake would,
        // letting the ports go before saying so.
        drop((bound, dns));
        log("supervisor stopped; the containers keep running");
        if st.supervisor() == Some(std::process::id() as i32) {
            st.clear_supervisor();
        }
        return Ok(0);
    }
    st.write_supervisor(std::process::id() as i32)?;
    // Before the load: a save during it shows as a change after it.
    let files_read = idle::fingerprint(&record.watched());
    let (target, handoff) = match handoff {
        Some(h) => {
            let graph = crate::graph::Graph::new(&h.project)
                .map_err(|_| anyhow::anyhow!("the handed-over project has a dependency cycle"))?;
            let t = crate::reconcile::Target {
                project: h.project.clone(),
                dir: h.dir.clone(),
                graph,
            };
            (t, Some(h))
        }
        None => match load_in_supervisor(&record) {
            Ok(t) => (t, None),
            Err(e) => {
                st.write_status(&Status {
                    invalid: Some(e.clone()),
                    ..st.status()
                })?;
                bail!("the project file does not load: {e}");
            }
        },
    };
    let lock_fd = _lock.fd.as_raw_fd();
    let rt = runtime()?;
    // One thread: the supervisor waits far more than it works, and every worker thread costs
    // memory for as long as the project runs.
    let tk = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    if handoff.is_none() {
        log(format!(
            "supervising project {name} (pid {})",
            std::process::id()
        ));
    }
    let stop = idle::stop_signals().context("reading the stop signals")?;
    tk.block_on(async {
        let mut sup = Supervisor::new(rt, st.clone(), record, Arc::new(target))
            .files_read(files_read)
            .with_ports(bound)
            .on_ready(move || {
                if let Some(fd) = ready {
                    let _ = nix::unistd::write(&fd, b"r");
                }
            });
        if let Some(h) = handoff {
            sup = sup.resume(h, dns);
        }
        if let Some(after) = idle_after() {
            let project = name.clone();
            sup = sup.idle_after(
                after,
                Box::new(move |sleep| {
                    // Its zygote would be left a zombie that nobody reaps.
                    crate::runtime::before_exec();
                    idle::sleep(sleep, lock_fd, &project)
                }),
            );
        }
        sup.run(async move {
            // SAFETY: the SignalFd is moved into the AsyncFd, which owns it (and so keeps the
            // descriptor open and the same) for its whole life.
            let registered = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(
                    stop,
                    tokio::io::Interest::READABLE,
                )
            };
            let Ok(stop) = registered else {
                return std::future::pending().await;
            };
            loop {
                let Ok(mut ready) = stop.readable().await else {
                    return std::future::pending().await;
                };
                if let Ok(Some(_)) = stop.get_ref().read_signal() {
                    return;
                }
                ready.clear_ready();
            }
        })
        .await;
    });
    // The runtime holds the published ports' sockets until it is dropped: they are let go
    // before `berth up` is told this supervisor is gone and binds them again.
    drop(tk);
    log("supervisor stopped; the containers keep running");
    if st.supervisor() == Some(std::process::id() as i32) {
        st.clear_supervisor();
    }
    Ok(0)
}
