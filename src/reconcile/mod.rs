//! Executes plans. Every service is its own task that waits for exactly its own dependencies'
//! conditions (`service_started`, `service_healthy`, `service_completed_successfully`) and then
//! runs its steps, so a dependent of one fast service never waits for unrelated slow ones (no
//! level barrier). A step that fails fails its service and the dependents that require it;
//! everything else still converges, and the next plan repairs what was left half done.

pub mod decide;
pub mod health;
pub mod host;
pub mod idle;
pub mod restart;
pub mod supervisor;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::graph::Graph;
use crate::plan::{Action, ObservedContainer, Plan, State, container_name};
use crate::runtime::{ContainerSpec, Runtime, RuntimeError};
use crate::spec::model::{Condition, Project};

/// How far a service has come, as its dependents see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Pending,
    Started,
    Healthy,
    /// Every container of the service has exited; the first non-zero status, else 0.
    Completed(i32),
    Failed(String),
}

impl Readiness {
    /// Whether `cond` holds, `Some(false)` when it never will, `None` while it may still.
    fn meets(&self, cond: Condition) -> Option<bool> {
        use Readiness::*;
        match (self, cond) {
            (Pending, _) => None,
            (Failed(_), _) => Some(false),
            (_, Condition::ServiceStarted) => Some(true),
            (Healthy, Condition::ServiceHealthy) => Some(true),
            (Started, Condition::ServiceHealthy) => None,
            (Completed(_), Condition::ServiceHealthy) => Some(false),
            (Completed(c), Condition::ServiceCompletedSuccessfully) => Some(*c == 0),
            (_, Condition::ServiceCompletedSuccessfully) => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Readiness::Pending => "has not started".into(),
            Readiness::Started => "is running".into(),
            Readiness::Healthy => "is healthy".into(),
            Readiness::Completed(c) => format!("exited with code {c}"),
            Readiness::Failed(m) => m.clone(),
        }
    }
}

/// What is happening to one container (or, for `Waiting`, to a service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Waiting(String),
    Stopping,
    Stopped,
    Removing,
    Removed,
    Creating,
    Created,
    Starting,
    Started,
    /// Already as the file wants it.
    Running,
    WaitingHealthy,
    Healthy,
    Exited(i32),
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub service: String,
    /// The container, or empty for an event about the whole service.
    pub container: String,
    pub phase: Phase,
}

/// Where progress goes (the CLI's progress lines, the supervisor's log).
pub type Sink = Arc<dyn Fn(Event) + Send + Sync>;

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `-t`: the stop grace period for every container, instead of each `stop_grace_period`.
    pub timeout: Option<Duration>,
    /// `--no-start`: create, don't start.
    pub no_start: bool,
    /// `--wait`: a service with a health check is done when it is healthy.
    pub wait: bool,
}

/// A step that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub service: String,
    pub container: Option<String>,
    pub step: String,
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.container {
            Some(c) => write!(f, "{} ({c}): {}: {}", self.service, self.step, self.message),
            None => write!(f, "{}: {}: {}", self.service, self.step, self.message),
        }
    }
}

/// The desired side, shared by the tasks of one run.
#[derive(Debug)]
pub struct Target {
    pub project: Project,
    pub dir: PathBuf,
    pub graph: Graph,
}

impl Target {
    pub fn grace(&self, service: &str, opts: &Options) -> Duration {
        opts.timeout
            .or_else(|| {
                self.project
                    .services
                    .get(service)
                    .and_then(|s| s.stop_grace_period)
                    .map(|d| d.as_std())
            })
            .unwrap_or(Duration::from_secs(10))
    }
}

struct Ctx<R> {
    rt: Arc<R>,
    target: Arc<Target>,
    opts: Options,
    sink: Sink,
}

impl<R> Ctx<R> {
    fn emit(&self, service: &str, container: &str, phase: Phase) {
        (self.sink)(Event {
            service: service.to_string(),
            container: container.to_string(),
            phase,
        });
    }
}

fn fail(service: &str, container: Option<&str>, step: &str, e: impl ToString) -> Failure {
    Failure {
        service: service.to_string(),
        container: container.map(str::to_string),
        step: step.to_string(),
        message: e.to_string(),
    }
}

fn runtime_failure(service: &str, container: &str, e: RuntimeError) -> Failure {
    match e {
        RuntimeError::Step { step, cause, .. } => fail(service, Some(container), step, cause),
        other => fail(service, Some(container), "runtime", other),
    }
}

/// Runs `plan` against the runtime. `current` is what was observed when the plan was made
/// (services the plan leaves alone take their readiness from it).
pub async fn apply<R: Runtime + 'static>(
    rt: Arc<R>,
    target: Arc<Target>,
    plan: &Plan,
    current: &[ObservedContainer],
    opts: Options,
    sink: Sink,
) -> Vec<Failure> {
    let ctx = Arc::new(Ctx {
        rt,
        target: target.clone(),
        opts,
        sink,
    });
    let mut senders = BTreeMap::new();
    let mut receivers = BTreeMap::new();
    for name in target.project.services.keys() {
        let (tx, rx) = watch::channel(Readiness::Pending);
        senders.insert(name.clone(), tx);
        receivers.insert(name.clone(), rx);
    }
    let mut actions: BTreeMap<String, Vec<Action>> = BTreeMap::new();
    for a in &plan.actions {
        actions
            .entry(a.service().to_string())
            .or_default()
            .push(a.clone());
    }
    let mut tasks = JoinSet::new();
    // Containers of services that left the file: nothing waits for them.
    for (service, acts) in &actions {
        if target.project.services.contains_key(service) {
            continue;
        }
        for a in acts.clone() {
            let ctx = ctx.clone();
            let service = service.clone();
            tasks.spawn(async move {
                let mut out = Vec::new();
                if let Action::Remove { name, .. } = &a
                    && let Err(f) = stop_and_remove(&ctx, &service, name).await
                {
                    out.push(f);
                }
                out
            });
        }
    }
    for (name, tx) in senders {
        let deps: Vec<(String, Condition, bool, watch::Receiver<Readiness>)> = target
            .graph
            .dependencies(&name)
            .into_iter()
            .filter_map(|(d, e)| {
                receivers
                    .get(d)
                    .map(|rx| (d.to_string(), e.condition, e.required, rx.clone()))
            })
            .collect();
        let dependents = target.graph.dependents(&name);
        let needs_healthy = ctx.opts.wait
            || dependents
                .iter()
                .any(|(_, e)| e.condition == Condition::ServiceHealthy);
        let needs_completed = dependents
            .iter()
            .any(|(_, e)| e.condition == Condition::ServiceCompletedSuccessfully);
        let acts = actions.remove(&name).unwrap_or_default();
        let cur: Vec<ObservedContainer> = current
            .iter()
            .filter(|c| c.service == name)
            .cloned()
            .collect();
        let ctx = ctx.clone();
        tasks.spawn(async move {
            service_task(
                &ctx,
                &name,
                acts,
                cur,
                deps,
                tx,
                needs_healthy,
                needs_completed,
            )
            .await
        });
    }
    let mut failures = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(f) => failures.extend(f),
            Err(e) => failures.push(fail("-", None, "task", e)),
        }
    }
    failures.sort_by(|a, b| a.service.cmp(&b.service));
    failures
}

#[allow(clippy::too_many_arguments)]
async fn service_task<R: Runtime + 'static>(
    ctx: &Arc<Ctx<R>>,
    name: &str,
    actions: Vec<Action>,
    current: Vec<ObservedContainer>,
    deps: Vec<(String, Condition, bool, watch::Receiver<Readiness>)>,
    tx: watch::Sender<Readiness>,
    needs_healthy: bool,
    needs_completed: bool,
) -> Vec<Failure> {
    // 1. This service's own dependencies, each with its condition.
    for (dep, cond, required, mut rx) in deps {
        if rx.borrow().meets(cond).is_none() {
            ctx.emit(name, "", Phase::Waiting(dep.clone()));
        }
        let state = match rx.wait_for(|r| r.meets(cond).is_some()).await {
            Ok(r) => r.clone(),
            Err(_) => Readiness::Failed("was not started".into()),
        };
        if state.meets(cond) == Some(true) {
            continue;
        }
        if required {
            let why = format!("dependency {dep} {}", state.describe());
            ctx.emit(name, "", Phase::Failed(why.clone()));
            let _ = tx.send(Readiness::Failed(why.clone()));
            return vec![fail(name, None, "waiting for dependencies", why)];
        }
        tracing::warn!("{name}: optional dependency {dep} {}", state.describe());
    }

    // 2. Its steps: every container in parallel.
    let mut set = JoinSet::new();
    let touched: Vec<String> = actions.iter().filter_map(action_container(ctx)).collect();
    for a in actions {
        let ctx = ctx.clone();
        let name = name.to_string();
        set.spawn(async move { run_action(&ctx, &name, a).await });
    }
    let mut failures = Vec::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Err(f)) => failures.push(f),
            Ok(Ok(())) => {}
            Err(e) => failures.push(fail(name, None, "task", e)),
        }
    }
    for c in &current {
        if !touched.contains(&c.name) && c.state == State::Running {
            ctx.emit(name, &c.name, Phase::Running);
        }
    }
    if let Some(f) = failures.first() {
        let _ = tx.send(Readiness::Failed(format!("failed: {}", f.message)));
        return failures;
    }
    if ctx.opts.no_start {
        let _ = tx.send(Readiness::Started);
        return failures;
    }

    // 3. What its dependents wait for.
    let want = ctx
        .target
        .project
        .services
        .get(name)
        .map_or(1, |s| s.replicas());
    let containers: Vec<String> = (1..=want)
        .map(|i| match ctx.target.project.services.get(name) {
            Some(s) => container_name(&ctx.target.project.name, name, s, i),
            None => String::new(),
        })
        .collect();
    let finished_ok = current
        .iter()
        .all(|c| c.state == State::Exited(0) && !touched.contains(&c.name))
        && !current.is_empty();
    let _ = tx.send(if finished_ok {
        Readiness::Completed(0)
    } else {
        Readiness::Started
    });
    if needs_healthy && !finished_ok {
        let mut checks = JoinSet::new();
        let mut any = false;
        for c in &containers {
            match ctx.rt.healthcheck(c) {
                Ok(Some(spec)) => {
                    any = true;
                    ctx.emit(name, c, Phase::WaitingHealthy);
                    let ctx = ctx.clone();
                    let c = c.clone();
                    checks.spawn(async move {
                        let r = health::wait_healthy(&*ctx.rt, &c, &spec).await;
                        (c, r)
                    });
                }
                Ok(None) => {}
                Err(e) => failures.push(runtime_failure(name, c, e)),
            }
        }
        let gated = ctx
            .target
            .graph
            .dependents(name)
            .iter()
            .any(|(_, e)| e.condition == Condition::ServiceHealthy);
        if !any && gated {
            let why = "has no health check, so service_healthy can never hold".to_string();
            let _ = tx.send(Readiness::Failed(why.clone()));
            return vec![fail(name, None, "health check", why)];
        }
        while let Some(r) = checks.join_next().await {
            match r {
                Ok((c, Ok(()))) => ctx.emit(name, &c, Phase::Healthy),
                Ok((c, Err(why))) => {
                    ctx.emit(name, &c, Phase::Failed(why.clone()));
                    failures.push(fail(name, Some(&c), "health check", why));
                }
                Err(e) => failures.push(fail(name, None, "task", e)),
            }
        }
        if let Some(f) = failures.first() {
            let _ = tx.send(Readiness::Failed(format!("container {}", f.message)));
            return failures;
        }
        if any {
            let _ = tx.send(Readiness::Healthy);
        }
    }
    if needs_completed && !finished_ok {
        let mut worst = 0;
        for c in &containers {
            match ctx.rt.wait(c).await {
                Ok(state) => {
                    let code = match state {
                        State::Exited(c) => c,
                        State::OomKilled => 137,
                        _ => 0,
                    };
                    ctx.emit(name, c, Phase::Exited(code));
                    if worst == 0 {
                        worst = code;
                    }
                }
                Err(e) => {
                    let f = runtime_failure(name, c, e);
                    let _ = tx.send(Readiness::Failed(f.message.clone()));
                    return vec![f];
                }
            }
        }
        let _ = tx.send(Readiness::Completed(worst));
    }
    failures
}

fn action_container<R>(ctx: &Ctx<R>) -> impl Fn(&Action) -> Option<String> + '_ {
    move |a| match a {
        Action::Create { service, index, .. } => ctx
            .target
            .project
            .services
            .get(service)
            .map(|s| container_name(&ctx.target.project.name, service, s, *index)),
        Action::Start { name, .. }
        | Action::Recreate { name, .. }
        | Action::Restart { name, .. }
        | Action::Stop { name, .. }
        | Action::Remove { name, .. } => Some(name.clone()),
    }
}

async fn run_action<R: Runtime>(ctx: &Ctx<R>, service: &str, a: Action) -> Result<(), Failure> {
    match a {
        Action::Create {
            index, config_hash, ..
        } => create_and_start(ctx, service, index, &config_hash).await,
        Action::Recreate {
            index,
            name,
            config_hash,
            ..
        } => {
            stop_and_remove(ctx, service, &name).await?;
            create_and_start(ctx, service, index, &config_hash).await
        }
        Action::Start { name, .. } => start(ctx, service, &name).await,
        Action::Restart { name, .. } => {
            stop(ctx, service, &name).await?;
            start(ctx, service, &name).await
        }
        Action::Stop { name, .. } => stop(ctx, service, &name).await,
        Action::Remove { name, .. } => stop_and_remove(ctx, service, &name).await,
    }
}

async fn create_and_start<R: Runtime>(
    ctx: &Ctx<R>,
    service: &str,
    index: u32,
    config_hash: &str,
) -> Result<(), Failure> {
    let project = &ctx.target.project;
    let Some(def) = project.services.get(service) else {
        return Err(fail(service, None, "create", "not in the project file"));
    };
    let name = container_name(&project.name, service, def, index);
    ctx.emit(service, &name, Phase::Creating);
    let spec = ContainerSpec {
        project: project.name.clone(),
        service: service.to_string(),
        index,
        name: name.clone(),
        config_hash: config_hash.to_string(),
        definition: def.clone(),
        oneoff: false,
        networks: crate::net::attachments(project, service)
            .map_err(|e| fail(service, Some(&name), "network", e))?,
        mounts: crate::disk::mounts(project, service)
            .map_err(|e| fail(service, Some(&name), "volumes", e))?,
        granted: crate::disk::secrets::granted(project, service, &ctx.target.dir)
            .map_err(|e| fail(service, Some(&name), "secrets", e))?,
    };
    if let Err(e) = ctx.rt.create(&spec).await {
        let f = runtime_failure(service, &name, e);
        ctx.emit(service, &name, Phase::Failed(f.message.clone()));
        return Err(f);
    }
    ctx.emit(service, &name, Phase::Created);
    if ctx.opts.no_start {
        return Ok(());
    }
    start(ctx, service, &name).await
}

async fn start<R: Runtime>(ctx: &Ctx<R>, service: &str, name: &str) -> Result<(), Failure> {
    ctx.emit(service, name, Phase::Starting);
    match ctx.rt.start(name).await {
        Ok(()) => {
            ctx.emit(service, name, Phase::Started);
            Ok(())
        }
        Err(e) => {
            let f = runtime_failure(service, name, e);
            ctx.emit(service, name, Phase::Failed(f.message.clone()));
            Err(f)
        }
    }
}

async fn stop<R: Runtime>(ctx: &Ctx<R>, service: &str, name: &str) -> Result<(), Failure> {
    ctx.emit(service, name, Phase::Stopping);
    let grace = ctx.target.grace(service, &ctx.opts);
    ctx.rt
        .stop(name, grace)
        .await
        .map_err(|e| runtime_failure(service, name, e))?;
    ctx.emit(service, name, Phase::Stopped);
    Ok(())
}

async fn stop_and_remove<R: Runtime>(
    ctx: &Ctx<R>,
    service: &str,
    name: &str,
) -> Result<(), Failure> {
    stop(ctx, service, name).await?;
    ctx.emit(service, name, Phase::Removing);
    match ctx.rt.remove(name).await {
        Ok(()) | Err(RuntimeError::NotFound(_)) => {
            ctx.emit(service, name, Phase::Removed);
            Ok(())
        }
        Err(e) => Err(runtime_failure(service, name, e)),
    }
}

/// Stops (and with `remove`, removes) `containers`: a service's containers go once every
/// service that depends on it has gone, each service as soon as its own dependents are done.
/// Containers of services the graph does not know (orphans) go at once.
pub async fn teardown<R: Runtime + 'static>(
    rt: Arc<R>,
    target: Arc<Target>,
    containers: Vec<ObservedContainer>,
    remove: bool,
    opts: Options,
    sink: Sink,
) -> Vec<Failure> {
    let ctx = Arc::new(Ctx {
        rt,
        target: target.clone(),
        opts,
        sink,
    });
    let mut by_service: BTreeMap<String, Vec<ObservedContainer>> = BTreeMap::new();
    for c in containers {
        by_service.entry(c.service.clone()).or_default().push(c);
    }
    let mut done_tx = BTreeMap::new();
    let mut done_rx = BTreeMap::new();
    for s in by_service.keys() {
        let (tx, rx) = watch::channel(false);
        done_tx.insert(s.clone(), tx);
        done_rx.insert(s.clone(), rx);
    }
    let mut tasks = JoinSet::new();
    for (service, cs) in by_service {
        let waits: Vec<watch::Receiver<bool>> = target
            .graph
            .dependents(&service)
            .into_iter()
            .filter_map(|(d, _)| done_rx.get(d).cloned())
            .collect();
        let tx = done_tx.remove(&service);
        let ctx = ctx.clone();
        tasks.spawn(async move {
            for mut w in waits {
                let _ = w.wait_for(|d| *d).await;
            }
            let mut set = JoinSet::new();
            for c in cs {
                let ctx = ctx.clone();
                let service = service.clone();
                set.spawn(async move {
                    if remove {
                        stop_and_remove(&ctx, &service, &c.name).await
                    } else if c.state == State::Running {
                        stop(&ctx, &service, &c.name).await
                    } else {
                        Ok(())
                    }
                });
            }
            let mut failures = Vec::new();
            while let Some(r) = set.join_next().await {
                match r {
                    Ok(Err(f)) => failures.push(f),
                    Ok(Ok(())) => {}
                    Err(e) => failures.push(fail(&service, None, "task", e)),
                }
            }
            if let Some(tx) = tx {
                let _ = tx.send(true);
            }
            failures
        });
    }
    let mut failures = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(f) => failures.extend(f),
            Err(e) => failures.push(fail("-", None, "task", e)),
        }
    }
    failures
}

#[cfg(test)]
mod tests;
