//! The executor against the in-memory runtime: order, conditions, failures, repair.

use std::path::Path;
use std::sync::Mutex;

use super::*;
use crate::plan::{Observed, diff};
use crate::runtime::Runtime;
use crate::runtime::fake::FakeRuntime;
use crate::spec::model::{Dependency, Healthcheck, Service};
use crate::spec::units::Duration as D;

fn svc() -> Service {
    Service {
        image: Some("host".into()),
        ..Service::default()
    }
}

fn after(mut s: Service, deps: &[(&str, Condition, bool)]) -> Service {
    for (d, condition, required) in deps {
        s.depends_on.insert(
            d.to_string(),
            Dependency {
                condition: *condition,
                restart: false,
                required: *required,
            },
        );
    }
    s
}

fn checked(mut s: Service) -> Service {
    s.healthcheck = Some(Healthcheck {
        test: vec!["CMD".into(), "true".into()],
        interval: Some(D(10_000_000)),
        retries: Some(2),
        ..Healthcheck::default()
    });
    s
}

/// A project `t` of these services in `/proj` (the supervisor's tests use it too).
pub(super) fn target(services: Vec<(&str, Service)>) -> Arc<Target> {
    let mut p = Project {
        name: "t".into(),
        ..Project::default()
    };
    for (n, s) in services {
        p.services.insert(n.to_string(), s);
    }
    let graph = Graph::new(&p).unwrap();
    Arc::new(Target {
        project: p,
        dir: PathBuf::from("/proj"),
        graph,
    })
}

type Events = Arc<Mutex<Vec<Event>>>;

fn sink() -> (Sink, Events) {
    let ev: Events = Arc::default();
    let e = ev.clone();
    (Arc::new(move |x| e.lock().unwrap().push(x)), ev)
}

async fn up(rt: &Arc<FakeRuntime>, t: &Arc<Target>, opts: Options) -> Vec<Failure> {
    let observed = rt.observe("t").await.unwrap();
    let plan = diff(&t.project, Path::new("/proj"), &t.graph, &observed);
    let (s, _) = sink();
    apply(rt.clone(), t.clone(), &plan, &observed.containers, opts, s).await
}

async fn observed(rt: &FakeRuntime) -> Observed {
    rt.observe("t").await.unwrap()
}

#[tokio::test]
async fn conditions_order_the_starts() {
    let rt = Arc::new(FakeRuntime::new());
    rt.probes("db", &[1, 0]);
    rt.exit_after("migrate", Duration::from_millis(30), 0);
    let t = target(vec![
        ("db", checked(svc())),
        (
            "migrate",
            after(svc(), &[("db", Condition::ServiceHealthy, true)]),
        ),
        (
            "web",
            after(
                svc(),
                &[
                    ("db", Condition::ServiceHealthy, true),
                    ("migrate", Condition::ServiceCompletedSuccessfully, true),
                ],
            ),
        ),
    ]);
    let failures = up(&rt, &t, Options::default()).await;
    assert!(failures.is_empty(), "{failures:?}");
    let db = rt.finished("start t-db-1").unwrap();
    let mig = rt.finished("start t-migrate-1").unwrap();
    let web = rt.finished("start t-web-1").unwrap();
    // Two probes 10 ms apart before db is healthy; the job runs 30 ms.
    assert!(
        mig >= db + Duration::from_millis(20),
        "migrate waited for healthy"
    );
    assert!(
        web >= mig + Duration::from_millis(30),
        "web waited for the job"
    );
    assert_eq!(
        rt.calls().iter().filter(|c| *c == "probe t-db-1").count(),
        2
    );
}

#[tokio::test]
async fn no_level_barrier() {
    let rt = Arc::new(FakeRuntime::new());
    rt.start_delay("slow", Duration::from_millis(300));
    let t = target(vec![
        ("slow", svc()),
        ("fast", svc()),
        (
            "app",
            after(svc(), &[("fast", Condition::ServiceStarted, true)]),
        ),
        (
            "late",
            after(svc(), &[("slow", Condition::ServiceStarted, true)]),
        ),
    ]);
    let failures = up(&rt, &t, Options::default()).await;
    assert!(failures.is_empty(), "{failures:?}");
    let app = rt.finished("start t-app-1").unwrap();
    let slow = rt.finished("start t-slow-1").unwrap();
    let late = rt.finished("start t-late-1").unwrap();
    assert!(
        app < slow,
        "app did not wait for the unrelated slow service"
    );
    assert!(late >= slow);
}

#[tokio::test]
async fn a_failure_stops_its_dependents_only_and_the_next_up_repairs() {
    let rt = Arc::new(FakeRuntime::new());
    rt.fail("t-db-1", "start");
    let t = target(vec![
        ("db", svc()),
        (
            "web",
            after(svc(), &[("db", Condition::ServiceStarted, true)]),
        ),
        (
            "opt",
            after(svc(), &[("db", Condition::ServiceStarted, false)]),
        ),
        ("other", svc()),
    ]);
    let failures = up(&rt, &t, Options::default()).await;
    let text: Vec<String> = failures.iter().map(|f| f.to_string()).collect();
    assert_eq!(failures.len(), 2, "{text:?}");
    assert!(text[0].starts_with("db (t-db-1): start:"), "{text:?}");
    assert!(text[1].contains("web: waiting for dependencies: dependency db failed"));
    let o = observed(&rt).await;
    let state = |n: &str| o.containers.iter().find(|c| c.name == n).map(|c| c.state);
    assert_eq!(state("t-other-1"), Some(State::Running));
    assert_eq!(state("t-opt-1"), Some(State::Running), "required: false");
    assert_eq!(state("t-web-1"), None);
    assert_eq!(state("t-db-1"), Some(State::Created));
    // The failure is gone: the next up finishes the job and then has nothing to do.
    rt.clear_failures();
    assert!(up(&rt, &t, Options::default()).await.is_empty());
    let o = observed(&rt).await;
    assert!(o.containers.iter().all(|c| c.state == State::Running));
    assert_eq!(o.containers.len(), 4);
    let calls = rt.calls().len();
    assert!(up(&rt, &t, Options::default()).await.is_empty());
    assert_eq!(rt.calls().len(), calls, "a converged project is left alone");
}

#[tokio::test]
async fn a_job_that_fails_or_a_check_that_fails_blocks_dependents() {
    let rt = Arc::new(FakeRuntime::new());
    rt.exit_after("job", Duration::from_millis(5), 3);
    rt.probes("db", &[1, 1, 1]);
    let t = target(vec![
        ("job", svc()),
        (
            "a",
            after(
                svc(),
                &[("job", Condition::ServiceCompletedSuccessfully, true)],
            ),
        ),
        ("db", checked(svc())),
        (
            "b",
            after(svc(), &[("db", Condition::ServiceHealthy, true)]),
        ),
    ]);
    let failures = up(&rt, &t, Options::default()).await;
    let text: Vec<String> = failures.iter().map(|f| f.to_string()).collect();
    assert!(
        text.iter()
            .any(|t| t.contains("a: waiting for dependencies: dependency job exited with code 3")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t.contains("db (t-db-1): health check: is unhealthy")),
        "{text:?}"
    );
    assert!(text.iter().any(|t| t.starts_with("b: waiting")), "{text:?}");
}

#[tokio::test]
async fn a_finished_job_is_not_rerun_and_still_satisfies_its_dependents() {
    let rt = Arc::new(FakeRuntime::new());
    rt.exit_after("job", Duration::from_millis(1), 0);
    let t = target(vec![
        ("job", svc()),
        (
            "a",
            after(
                svc(),
                &[("job", Condition::ServiceCompletedSuccessfully, true)],
            ),
        ),
    ]);
    assert!(up(&rt, &t, Options::default()).await.is_empty());
    let starts = rt.calls().iter().filter(|c| c.starts_with("start")).count();
    assert!(up(&rt, &t, Options::default()).await.is_empty());
    let again = rt.calls().iter().filter(|c| c.starts_with("start")).count();
    assert_eq!(starts, again);
}

#[tokio::test]
async fn teardown_stops_dependents_first() {
    let rt = Arc::new(FakeRuntime::new());
    let t = target(vec![
        ("db", svc()),
        (
            "web",
            after(svc(), &[("db", Condition::ServiceStarted, true)]),
        ),
        (
            "front",
            after(svc(), &[("web", Condition::ServiceStarted, true)]),
        ),
    ]);
    assert!(up(&rt, &t, Options::default()).await.is_empty());
    let (s, ev) = sink();
    let cs = observed(&rt).await.containers;
    let f = teardown(rt.clone(), t.clone(), cs, true, Options::default(), s).await;
    assert!(f.is_empty(), "{f:?}");
    assert!(observed(&rt).await.containers.is_empty());
    let order: Vec<String> = ev
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.phase == Phase::Removed)
        .map(|e| e.service.clone())
        .collect();
    assert_eq!(order, ["front", "web", "db"]);
}
