//! The supervisor on the in-memory runtime and a fake host: crash loops, health flaps, edits
//! (good and broken), adoption by a second supervisor, and an idle spell's handoff, each in
//! real time but with delays of milliseconds, without root.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::plan::{Observed, diff};
use crate::reconcile::host::{Change, Host, OnChange};
use crate::reconcile::tests::target;
use crate::runtime::fake::FakeRuntime;
use crate::spec::model::{Healthcheck, Restart, Service};
use crate::spec::units::Duration as D;

/// What the project file holds: its services, or the error it does not load with.
type File = Result<Vec<(String, Service)>, String>;

/// Loads what the test last said the file holds; an edit tells the supervisor's watch.
#[derive(Default)]
struct FakeHost {
    file: Mutex<Option<File>>,
    on: Mutex<Option<OnChange>>,
    edits: AtomicU32,
}

impl FakeHost {
    /// The file is saved with `services` (or with an error that stops it loading).
    fn edit(&self, file: Result<Vec<(&str, Service)>, &str>) {
        let file = file
            .map(|v| v.into_iter().map(|(n, s)| (n.to_string(), s)).collect())
            .map_err(str::to_string);
        *self.file.lock().unwrap() = Some(file);
        self.edits.fetch_add(1, Ordering::SeqCst);
        if let Some(on) = &*self.on.lock().unwrap() {
            on(Change::Files);
        }
    }
}

impl Host for FakeHost {
    fn load(&self, _record: &ProjectRecord) -> Result<Target, String> {
        let file = self.file.lock().unwrap().clone();
        let services = file.ok_or("no edit")??;
        let services = services
            .iter()
            .map(|(n, s)| (n.as_str(), s.clone()))
            .collect();
        Ok(Arc::into_inner(target(services)).expect("one owner"))
    }

    fn fingerprint(&self, _files: &[std::path::PathBuf]) -> String {
        self.edits.load(Ordering::SeqCst).to_string()
    }

    fn watch(
        &self,
        _files: &[std::path::PathBuf],
        _events: &std::path::Path,
        on: OnChange,
    ) -> Option<Box<dyn std::any::Any + Send>> {
        *self.on.lock().unwrap() = Some(on);
        Some(Box::new(()))
    }

    fn release_memory(&self) {}
}

fn svc(restart: &str) -> Service {
    Service {
        image: Some("host".into()),
        restart: Some(Restart(restart.into())),
        ..Service::default()
    }
}

fn checked(mut s: Service) -> Service {
    s.healthcheck = Some(Healthcheck {
        test: vec!["CMD".into(), "true".into()],
        interval: Some(D(10_000_000)),
        retries: Some(1),
        ..Healthcheck::default()
    });
    s
}

/// A project's state directory in a temporary root, and its record.
struct World {
    _root: tempfile::TempDir,
    state: ProjectState,
    record: ProjectRecord,
    rt: Arc<FakeRuntime>,
    host: Arc<FakeHost>,
}

impl World {
    fn new() -> World {
        let root = tempfile::tempdir().expect("tempdir");
        let state = ProjectState::new(root.path(), "t");
        std::fs::create_dir_all(state.dir()).expect("state dir");
        // Where the events file goes (the system's watch makes it; an idle spell watches it).
        let events = crate::state::events_path(root.path(), "t");
        std::fs::create_dir_all(events.parent().expect("events dir")).expect("events dir");
        let record = ProjectRecord {
            name: "t".into(),
            working_dir: root.path().to_path_buf(),
            files: vec![root.path().join("compose.yaml")],
            ..ProjectRecord::default()
        };
        World {
            _root: root,
            state,
            record,
            rt: Arc::new(FakeRuntime::new()),
            host: Arc::new(FakeHost::default()),
        }
    }

    /// `berth up` without its supervisor.
    async fn up(&self, t: &Arc<Target>) {
        let observed = self.observed().await;
        let plan = diff(&t.project, &t.dir, &t.graph, &observed);
        let failures = apply(
            self.rt.clone(),
            t.clone(),
            &plan,
            &observed.containers,
            Options::default(),
            Arc::new(|_| {}),
        )
        .await;
        assert!(failures.is_empty(), "{failures:?}");
    }

    async fn observed(&self) -> Observed {
        self.rt.observe("t").await.expect("observe")
    }

    fn supervisor(&self, t: &Arc<Target>, ready: &Arc<AtomicBool>) -> Supervisor<FakeRuntime> {
        let r = ready.clone();
        Supervisor::new(
            self.rt.clone(),
            self.state.clone(),
            self.record.clone(),
            t.clone(),
        )
        .with_host(self.host.clone())
        .on_ready(move || r.store(true, Ordering::SeqCst))
    }

    fn count(&self, call: &str) -> usize {
        self.rt.calls().iter().filter(|c| *c == call).count()
    }

    fn status(&self) -> crate::state::ContainerStatus {
        self.state
            .status()
            .containers
            .get("t-web-1")
            .cloned()
            .unwrap_or_default()
    }
}

/// Waits (polling) until `f` holds, at most `limit`.
async fn until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    f()
}

/// Runs the supervisor beside `test`, and stops it when the test is done.
async fn beside<F: std::future::Future<Output = ()>>(
    sup: Supervisor<FakeRuntime>,
    test: impl FnOnce() -> F,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = sup.run(async move {
        let _ = stopped.await;
    });
    let body = async move {
        test().await;
        let _ = stop.send(());
    };
    tokio::join!(run, body);
}

#[tokio::test]
async fn a_crash_loop_restarts_with_a_doubling_backoff_and_on_failure_gives_up() {
    let w = World::new();
    w.rt.exit_after("web", Duration::from_millis(5), 1);
    w.rt.exit_after("job", Duration::from_millis(5), 1);
    let t = target(vec![("web", svc("always")), ("job", svc("on-failure:2"))]);
    w.up(&t).await;
    let ready = Arc::new(AtomicBool::new(false));
    beside(w.supervisor(&t, &ready), || async {
        // When each start of web happened: the gaps are the backoff (100, 200, 400 ms).
        let mut starts = vec![Instant::now()];
        let done = until(Duration::from_secs(5), || {
            let n = w.count("start t-web-1");
            if n > starts.len() {
                starts.push(Instant::now());
            }
            n >= 4
        })
        .await;
        assert!(done, "{:?}", w.rt.calls());
        let gaps: Vec<Duration> = starts.windows(2).map(|p| p[1] - p[0]).collect();
        // At least the three delays, and the third twice the first or more (each gap also
        // holds the few milliseconds of a run and of noticing its end).
        let total: Duration = gaps.iter().sum();
        assert!(
            total >= Duration::from_millis(700) && gaps[2] >= gaps[0] * 2,
            "the backoff doubles: {gaps:?}"
        );
        assert!(w.status().restarts >= 3 && w.status().last_exit == Some(1));
        // on-failure:2: two restarts, then it stays down and says so.
        assert!(until(Duration::from_secs(2), || w.count("start t-job-1") == 3).await);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(w.count("start t-job-1"), 3, "{:?}", w.rt.calls());
        let job = w.state.status().containers["t-job-1"].clone();
        assert_eq!((job.restarts, job.restarting), (2, false));
    })
    .await;
}

#[tokio::test]
async fn an_unhealthy_container_is_restarted_only_where_the_policy_says() {
    let w = World::new();
    // Healthy once, then failing: unhealthy after one failure (retries 1).
    let failing: Vec<i32> = std::iter::once(0).chain([1; 2000]).collect();
    w.rt.probes("web", &failing);
    w.rt.probes("db", &failing);
    let t = target(vec![
        ("web", checked(svc("always"))),
        ("db", checked(svc("no"))),
    ]);
    w.up(&t).await;
    let ready = Arc::new(AtomicBool::new(false));
    beside(w.supervisor(&t, &ready), || async {
        let restarted = until(Duration::from_secs(5), || {
            w.count("stop t-web-1") >= 1 && w.count("start t-web-1") >= 2
        })
        .await;
        assert!(restarted, "{:?}", w.rt.calls());
        assert!(
            until(Duration::from_secs(2), || {
                w.state
                    .status()
                    .containers
                    .get("t-db-1")
                    .and_then(|c| c.health)
                    == Some(crate::state::Health::Unhealthy)
            })
            .await
        );
        // db has no restart policy: unhealthy, and left running.
        assert_eq!(w.count("stop t-db-1"), 0, "{:?}", w.rt.calls());
    })
    .await;
}

#[tokio::test]
async fn an_edit_recreates_only_what_changed_and_a_broken_edit_changes_nothing() {
    let w = World::new();
    let t = target(vec![("web", svc("always")), ("db", svc("always"))]);
    w.up(&t).await;
    let ready = Arc::new(AtomicBool::new(false));
    beside(w.supervisor(&t, &ready), || async {
        assert!(until(Duration::from_secs(2), || ready.load(Ordering::SeqCst)).await);
        let mut web = svc("always");
        web.environment.insert("MODE".into(), Some("new".into()));
        w.host
            .edit(Ok(vec![("web", web.clone()), ("db", svc("always"))]));
        assert!(
            until(Duration::from_secs(3), || w.count("create t-web-1") == 2
                && w.count("start t-web-1") == 2)
            .await,
            "{:?}",
            w.rt.calls()
        );
        assert_eq!(w.count("remove t-web-1"), 1);
        assert_eq!((w.count("create t-db-1"), w.count("stop t-db-1")), (1, 0));
        // A save that does not load: said in the status, and nothing is touched.
        let calls = w.rt.calls().len();
        w.host.edit(Err(
            "compose.yaml:3:5: services.web.image: expected a string",
        ));
        assert!(
            until(Duration::from_secs(3), || w
                .state
                .status()
                .invalid
                .is_some())
            .await
        );
        assert!(
            w.state
                .status()
                .invalid
                .unwrap()
                .contains("compose.yaml:3:5")
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after: Vec<String> = w.rt.calls().split_off(calls);
        assert!(
            after
                .iter()
                .all(|c| !c.starts_with("create") && !c.starts_with("stop")),
            "{after:?}"
        );
        // Fixed: the message goes, and what runs is what the file says.
        w.host.edit(Ok(vec![("web", web), ("db", svc("always"))]));
        assert!(
            until(Duration::from_secs(3), || w
                .state
                .status()
                .invalid
                .is_none())
            .await
        );
        assert_eq!(w.count("create t-web-1"), 2);
    })
    .await;
}

#[tokio::test]
async fn a_second_supervisor_adopts_what_runs_and_answers_for_what_ended_unwatched() {
    let w = World::new();
    let t = target(vec![("web", svc("always")), ("api", svc("always"))]);
    w.up(&t).await;
    let ready = Arc::new(AtomicBool::new(false));
    // The first supervisor goes (as after `kill -9`): its containers stay.
    beside(w.supervisor(&t, &ready), || async {
        assert!(until(Duration::from_secs(2), || ready.load(Ordering::SeqCst)).await);
    })
    .await;
    // One of them ends while nobody watches.
    w.rt.set_state("t-api-1", State::Exited(2));
    let ready = Arc::new(AtomicBool::new(false));
    beside(w.supervisor(&t, &ready), || async {
        assert!(until(Duration::from_secs(2), || ready.load(Ordering::SeqCst)).await);
        // The one that ended is restarted by its policy, once; the running one is adopted,
        // not started again.
        assert!(until(Duration::from_secs(2), || w.count("start t-api-1") == 2).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(w.count("start t-api-1"), 2, "{:?}", w.rt.calls());
        assert_eq!(w.count("start t-web-1"), 1, "{:?}", w.rt.calls());
        // Adopted: its next crash is answered.
        w.rt.set_state("t-web-1", State::Exited(1));
        assert!(until(Duration::from_secs(2), || w.count("start t-web-1") == 2).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(w.count("start t-web-1"), 2, "{:?}", w.rt.calls());
    })
    .await;
}

#[tokio::test]
async fn an_idle_spell_hands_over_a_pending_restart_and_the_woken_supervisor_keeps_it() {
    let w = World::new();
    let mut web = svc("on-failure");
    web.deploy = Some(crate::spec::model::Deploy {
        restart_policy: Some(crate::spec::model::RestartPolicy {
            condition: Some("on-failure".into()),
            delay: Some(D(2_500_000_000)),
            ..Default::default()
        }),
        ..Default::default()
    });
    w.rt.exit_after("web", Duration::from_millis(5), 3);
    let t = target(vec![("web", web)]);
    w.up(&t).await;
    // It has ended before the supervisor starts (the in-memory runtime's runs have no process
    // to wait on in an idle spell): the supervisor answers for the exit, then has nothing to
    // do for 2.5 s.
    assert!(
        until(Duration::from_secs(1), || w
            .rt
            .calls()
            .contains(&"start t-web-1".to_string()))
        .await
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let ready = Arc::new(AtomicBool::new(false));
    let slept: Arc<Mutex<Option<crate::reconcile::idle::Handoff>>> = Arc::default();
    let s = slept.clone();
    let sup = w.supervisor(&t, &ready).idle_after(
        Duration::ZERO,
        Box::new(move |sleep| {
            // berth-idle would take over here; the test keeps what it is handed.
            *s.lock().unwrap() = Some(sleep.handoff);
            IdleError::TooMany(0)
        }),
    );
    let began = Instant::now();
    beside(sup, || async {
        assert!(until(Duration::from_secs(3), || slept.lock().unwrap().is_some()).await);
    })
    .await;
    let handoff = slept.lock().unwrap().take().expect("handoff");
    let ws = &handoff.watches["t-web-1"];
    // The exit was handled, its restart waits out the backoff, and the time it is due
    // crosses the spell.
    assert!(ws.done && ws.restart_due.is_some(), "{ws:?}");
    assert_eq!(w.count("start t-web-1"), 1);
    assert!(w.status().restarting);
    // Woken (the timer of the restart ran out): the supervisor carries on from the handoff and
    // restarts it when it was due, not at once and not from a fresh count.
    let ready = Arc::new(AtomicBool::new(false));
    let sup = w.supervisor(&t, &ready).resume(handoff, Vec::new());
    beside(sup, || async {
        assert!(until(Duration::from_secs(4), || w.count("start t-web-1") == 2).await);
        let at = began.elapsed();
        assert!(at >= Duration::from_millis(2400), "restarted after {at:?}");
        assert_eq!(w.status().restarts, 1);
    })
    .await;
}
