//! An in-memory `Runtime` for the reconciler's tests: containers are entries in a map, every
//! call is recorded, and failures can be injected per container and step.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{
    ContainerSpec, ExecOptions, HealthSpec, Info, Inspect, Runtime, RuntimeError, Started, Stats,
};
use crate::plan::{Observed, ObservedContainer, State};

#[derive(Debug, Default)]
struct Inner {
    containers: BTreeMap<String, (String, ObservedContainer)>,
    calls: Vec<String>,
    fail: Vec<(String, &'static str)>,
    /// Per service: how long `start` takes.
    start_delay: BTreeMap<String, Duration>,
    /// Per service: the process exits with this status this long after it starts.
    exit_after: BTreeMap<String, (Duration, i32)>,
    /// Per container: when its process will exit, and with what.
    exits_at: BTreeMap<String, (Instant, i32)>,
    /// Per service: the exit statuses of its next probes (0 once the queue is empty).
    probes: BTreeMap<String, VecDeque<i32>>,
    health: BTreeMap<String, HealthSpec>,
    /// When each step finished, for ordering assertions.
    finished: Vec<(String, Instant)>,
}

impl Inner {
    /// Applies the exits that are due.
    fn refresh(&mut self) {
        let now = Instant::now();
        let due: Vec<(String, i32)> = self
            .exits_at
            .iter()
            .filter(|(_, (t, _))| *t <= now)
            .map(|(n, (_, c))| (n.clone(), *c))
            .collect();
        for (n, code) in due {
            self.exits_at.remove(&n);
            if let Some((_, c)) = self.containers.get_mut(&n)
                && c.state == State::Running
            {
                c.state = State::Exited(code);
            }
        }
    }
}

#[derive(Debug)]
pub struct FakeRuntime {
    inner: Mutex<Inner>,
    images: crate::image::ImageStore,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        FakeRuntime {
            inner: Mutex::default(),
            images: crate::image::ImageStore::unopened(std::path::Path::new(
                "/nonexistent/berth-fake",
            )),
        }
    }
}

impl FakeRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `step` ("create", "start", "stop", "remove") fail for `container`.
    pub fn fail(&self, container: &str, step: &'static str) {
        self.lock().fail.push((container.to_string(), step));
    }

    /// Makes every `start` of `service`'s containers take `d`.
    pub fn start_delay(&self, service: &str, d: Duration) {
        self.lock().start_delay.insert(service.to_string(), d);
    }

    /// Makes `service`'s process exit with `code`, `after` it starts.
    pub fn exit_after(&self, service: &str, after: Duration, code: i32) {
        self.lock()
            .exit_after
            .insert(service.to_string(), (after, code));
    }

    /// The exit statuses of `service`'s next health probes.
    pub fn probes(&self, service: &str, codes: &[i32]) {
        self.lock()
            .probes
            .insert(service.to_string(), codes.iter().copied().collect());
    }

    /// When `step name` last finished.
    pub fn finished(&self, call: &str) -> Option<Instant> {
        self.lock()
            .finished
            .iter()
            .rev()
            .find(|(c, _)| c == call)
            .map(|(_, t)| *t)
    }

    /// Removes every injected failure.
    pub fn clear_failures(&self) {
        self.lock().fail.clear();
    }

    /// Every call so far, as `step name`.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// Sets a container's state, as if its process had exited.
    pub fn set_state(&self, name: &str, state: State) {
        if let Some((_, c)) = self.lock().containers.get_mut(name) {
            c.state = state;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic in another test thread must not hide this test's result.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn step(
        &self,
        name: &str,
        step: &'static str,
    ) -> Result<std::sync::MutexGuard<'_, Inner>, RuntimeError> {
        let mut g = self.lock();
        g.calls.push(format!("{step} {name}"));
        if g.fail.iter().any(|(c, s)| c == name && *s == step) {
            return Err(RuntimeError::Step {
                container: name.to_string(),
                step,
                cause: super::Cause::new("injected failure"),
            });
        }
        Ok(g)
    }
}

impl Runtime for FakeRuntime {
    async fn observe(&self, project: &str) -> Result<Observed, RuntimeError> {
        let mut g = self.lock();
        g.refresh();
        Ok(Observed {
            containers: g
                .containers
                .values()
                .filter(|(p, _)| p == project)
                .map(|(_, c)| c.clone())
                .collect(),
        })
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let mut g = self.step(&spec.name, "create")?;
        if g.containers.contains_key(&spec.name) {
            return Err(RuntimeError::Exists(spec.name.clone()));
        }
        if let Some(h) = HealthSpec::resolve(spec.definition.healthcheck.as_ref(), None) {
            g.health.insert(spec.name.clone(), h);
        }
        g.containers.insert(
            spec.name.clone(),
            (
                spec.project.clone(),
                ObservedContainer {
                    name: spec.name.clone(),
                    service: spec.service.clone(),
                    index: spec.index,
                    config_hash: spec.config_hash.clone(),
                    state: State::Created,
                    oneoff: spec.oneoff,
                    pid: None,
                },
            ),
        );
        Ok(())
    }

    async fn start(&self, name: &str) -> Result<(), RuntimeError> {
        let delay = {
            let g = self.lock();
            g.containers
                .get(name)
                .and_then(|(_, c)| g.start_delay.get(&c.service).copied())
        };
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let mut g = self.step(name, "start")?;
        let c = g
            .containers
            .get_mut(name)
            .ok_or_else(|| RuntimeError::NotFound(name.to_string()))?;
        c.1.state = State::Running;
        let service = c.1.service.clone();
        if let Some(&(after, code)) = g.exit_after.get(&service) {
            g.exits_at
                .insert(name.to_string(), (Instant::now() + after, code));
        }
        g.finished.push((format!("start {name}"), Instant::now()));
        Ok(())
    }

    async fn stop(&self, name: &str, _grace: Duration) -> Result<(), RuntimeError> {
        let mut g = self.step(name, "stop")?;
        let c = g
            .containers
            .get_mut(name)
            .ok_or_else(|| RuntimeError::NotFound(name.to_string()))?;
        if c.1.state == State::Running {
            c.1.state = State::Exited(143);
        }
        g.exits_at.remove(name);
        Ok(())
    }

    async fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        let mut g = self.step(name, "remove")?;
        g.health.remove(name);
        g.containers
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| RuntimeError::NotFound(name.to_string()))
    }

    async fn wait(&self, name: &str) -> Result<State, RuntimeError> {
        loop {
            {
                let mut g = self.lock();
                g.refresh();
                let c = g
                    .containers
                    .get(name)
                    .ok_or_else(|| RuntimeError::NotFound(name.to_string()))?;
                if c.1.state != State::Running {
                    return Ok(c.1.state);
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn healthcheck(&self, name: &str) -> Result<Option<HealthSpec>, RuntimeError> {
        Ok(self.lock().health.get(name).cloned())
    }

    async fn probe(
        &self,
        name: &str,
        _argv: &[String],
        _timeout: Duration,
    ) -> Result<(i32, String), RuntimeError> {
        let mut g = self.step(name, "probe")?;
        g.refresh();
        let service = match g.containers.get(name) {
            Some((_, c)) if c.state == State::Running => c.service.clone(),
            _ => {
                return Err(not_running(name, "probe"));
            }
        };
        let code = g
            .probes
            .get_mut(&service)
            .and_then(|q| q.pop_front())
            .unwrap_or(0);
        Ok((code, String::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Graph;
    use crate::plan::{Action, container_name, diff};
    use crate::spec::model::{Project, Service};
    use std::future::Future;
    use std::path::Path;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    /// The fake's futures never wait, so one poll finishes them.
    fn now<F: Future>(f: F) -> F::Output {
        let mut f = pin!(f);
        match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("the fake runtime never waits"),
        }
    }

    /// A minimal sequential executor of a plan (the real one, parallel and ordered by the
    /// graph, is the reconciler's).
    fn apply(rt: &FakeRuntime, p: &Project, plan: &crate::plan::Plan) -> Result<(), RuntimeError> {
        for a in &plan.actions {
            match a {
                Action::Create {
                    service,
                    index,
                    config_hash,
                    ..
                } => {
                    let svc = &p.services[service];
                    let name = container_name(&p.name, service, svc, *index);
                    now(rt.create(&ContainerSpec {
                        project: p.name.clone(),
                        service: service.clone(),
                        index: *index,
                        name: name.clone(),
                        config_hash: config_hash.clone(),
                        definition: svc.clone(),
                        oneoff: false,
                        networks: Vec::new(),
                        mounts: Vec::new(),
                        granted: Vec::new(),
                    }))?;
                    now(rt.start(&name))?;
                }
                Action::Recreate {
                    service,
                    index,
                    name,
                    config_hash,
                } => {
                    now(rt.stop(name, Duration::from_secs(1)))?;
                    now(rt.remove(name))?;
                    let svc = &p.services[service];
                    now(rt.create(&ContainerSpec {
                        project: p.name.clone(),
                        service: service.clone(),
                        index: *index,
                        name: name.clone(),
                        config_hash: config_hash.clone(),
                        definition: svc.clone(),
                        oneoff: false,
                        networks: Vec::new(),
                        mounts: Vec::new(),
                        granted: Vec::new(),
                    }))?;
                    now(rt.start(name))?;
                }
                Action::Start { name, .. } | Action::Restart { name, .. } => now(rt.start(name))?,
                Action::Stop { name, .. } => now(rt.stop(name, Duration::from_secs(1)))?,
                Action::Remove { name, .. } => {
                    now(rt.stop(name, Duration::from_secs(1)))?;
                    now(rt.remove(name))?
                }
            }
        }
        Ok(())
    }

    fn project() -> Project {
        let mut p = Project {
            name: "demo".into(),
            ..Project::default()
        };
        for n in ["web", "db"] {
            p.services.insert(
                n.into(),
                Service {
                    image: Some("host".into()),
                    ..Service::default()
                },
            );
        }
        p
    }

    #[test]
    fn plan_apply_observe_converges() {
        let rt = FakeRuntime::new();
        let p = project();
        let g = Graph::new(&p).unwrap();
        let dir = Path::new("/x");
        let first = diff(&p, dir, &g, &now(rt.observe("demo")).unwrap());
        assert_eq!(first.actions.len(), 2);
        apply(&rt, &p, &first).unwrap();
        let again = diff(&p, dir, &g, &now(rt.observe("demo")).unwrap());
        assert!(again.is_empty(), "{again:?}");
        // A crashed container is started again.
        rt.set_state("demo-web-1", State::Exited(1));
        let fix = diff(&p, dir, &g, &now(rt.observe("demo")).unwrap());
        assert!(matches!(&fix.actions[..], [Action::Start { name, .. }] if name == "demo-web-1"));
    }

    #[test]
    fn a_failed_step_is_repaired_by_the_next_plan() {
        let rt = FakeRuntime::new();
        let p = project();
        let g = Graph::new(&p).unwrap();
        let dir = Path::new("/x");
        rt.fail("demo-web-1", "start");
        let first = diff(&p, dir, &g, &now(rt.observe("demo")).unwrap());
        assert!(apply(&rt, &p, &first).is_err());
        rt.lock().fail.clear();
        let second = diff(&p, dir, &g, &now(rt.observe("demo")).unwrap());
        apply(&rt, &p, &second).unwrap();
        let third = diff(&p, dir, &g, &now(rt.observe("demo")).unwrap());
        assert!(third.is_empty(), "{third:?}");
        assert!(rt.calls().iter().any(|c| c == "start demo-web-1"));
    }
}

/// What a step on a container that does not run fails with.
fn not_running(name: &str, step: &'static str) -> RuntimeError {
    RuntimeError::Step {
        container: name.to_string(),
        step,
        cause: super::Cause::new("the container is not running"),
    }
}

/// The in-memory runtime starts no processes: `exec` is refused, so none of these exists.
#[derive(Debug)]
pub enum NoProcess {}

impl Started for NoProcess {
    fn pid(&self) -> i32 {
        match *self {}
    }

    fn take_terminal(&mut self) -> Option<std::os::fd::OwnedFd> {
        match *self {}
    }

    fn status_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match *self {}
    }

    fn wait(self) -> Result<i32, RuntimeError> {
        match self {}
    }
}

impl Inspect for FakeRuntime {
    type Process = NoProcess;

    fn info(&self, name: &str) -> Result<Info, RuntimeError> {
        let mut g = self.lock();
        g.refresh();
        let (project, c) = g
            .containers
            .get(name)
            .ok_or_else(|| RuntimeError::NotFound(name.to_string()))?;
        Ok(Info {
            name: c.name.clone(),
            project: project.clone(),
            service: c.service.clone(),
            index: c.index,
            image: "fake".into(),
            command: Vec::new(),
            created_at: 0,
            started_at: None,
            pid: c.pid,
            state: c.state,
            finished_at: None,
            dir: std::path::PathBuf::new(),
        })
    }

    fn signal(&self, name: &str, sig: nix::sys::signal::Signal) -> Result<(), RuntimeError> {
        let mut g = self.lock();
        g.calls.push(format!("signal {name} {}", sig.as_str()));
        match g.containers.get_mut(name) {
            Some((_, c)) if c.state == State::Running => {
                if sig == nix::sys::signal::Signal::SIGKILL {
                    c.state = State::Exited(137);
                }
                Ok(())
            }
            Some(_) => Err(not_running(name, "kill")),
            None => Err(RuntimeError::NotFound(name.to_string())),
        }
    }

    fn freeze(&self, name: &str, frozen: bool) -> Result<(), RuntimeError> {
        let mut g = self.lock();
        g.calls.push(format!(
            "{} {name}",
            if frozen { "pause" } else { "unpause" }
        ));
        match g.containers.get_mut(name) {
            Some((_, c)) if matches!(c.state, State::Running | State::Paused) => {
                c.state = if frozen {
                    State::Paused
                } else {
                    State::Running
                };
                Ok(())
            }
            Some(_) => Err(not_running(name, "pause")),
            None => Err(RuntimeError::NotFound(name.to_string())),
        }
    }

    fn exec(
        &self,
        name: &str,
        _opts: &ExecOptions,
        _stdio: [std::os::fd::OwnedFd; 3],
    ) -> Result<NoProcess, RuntimeError> {
        Err(RuntimeError::Step {
            container: name.to_string(),
            step: "exec",
            cause: super::Cause::new("the in-memory runtime runs no processes"),
        })
    }

    fn stats(&self, name: &str) -> Result<Stats, RuntimeError> {
        self.info(name).map(|_| Stats::default())
    }

    fn processes(&self, name: &str) -> Result<Vec<u32>, RuntimeError> {
        let info = self.info(name)?;
        Ok(info
            .pid
            .and_then(|p| u32::try_from(p).ok())
            .into_iter()
            .collect())
    }

    fn images(&self) -> &crate::image::ImageStore {
        &self.images
    }

    fn images_in_use(&self) -> std::collections::BTreeSet<String> {
        Default::default()
    }
}

#[cfg(test)]
mod inspect_tests {
    use super::*;

    fn spec(name: &str) -> ContainerSpec {
        ContainerSpec {
            project: "p".into(),
            service: "web".into(),
            index: 1,
            name: name.into(),
            config_hash: "h".into(),
            definition: Default::default(),
            oneoff: false,
            networks: Vec::new(),
            mounts: Vec::new(),
            granted: Vec::new(),
        }
    }

    #[tokio::test]
    async fn both_halves_of_the_seam_act_on_the_same_containers() {
        let rt = FakeRuntime::new();
        rt.create(&spec("p-web-1")).await.unwrap();
        // Not running yet: nothing to pause or signal.
        assert!(rt.freeze("p-web-1", true).is_err());
        rt.start("p-web-1").await.unwrap();
        rt.freeze("p-web-1", true).unwrap();
        assert_eq!(rt.info("p-web-1").unwrap().state, State::Paused);
        rt.freeze("p-web-1", false).unwrap();
        rt.signal("p-web-1", nix::sys::signal::Signal::SIGKILL)
            .unwrap();
        assert_eq!(rt.wait("p-web-1").await.unwrap(), State::Exited(137));
        assert!(matches!(
            rt.info("nope"),
            Err(RuntimeError::NotFound(n)) if n == "nope"
        ));
        assert!(rt.images().resolve("busybox").is_err());
    }
}
