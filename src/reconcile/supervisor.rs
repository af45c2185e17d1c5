//! The per-project supervisor: one loop fed by triggers (a container ended, a health status
//! changed, a restart's backoff is over, the project file was saved), each handled in turn,
//! as kube-runtime's controllers do. It restarts containers by policy with a doubling backoff,
//! runs health checks, and re-plans when the file changes: only services whose configuration
//! hash changed are recreated. A supervisor started again (after `kill -9`) adopts what runs:
//! it waits on the containers' pidfds, it never starts a second copy.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::health::{Status as Health, Tracker};
use super::host::{Change, Host};
use super::idle::{self, Handoff, HealthState, IdleError, Sleep, WatchState};
use super::restart::Policy;
use super::{Event, Options, Sink, Target, apply};
use crate::plan::{Action, State, diff};
use crate::runtime::Runtime;
use crate::state::{ProjectRecord, ProjectState, Status};

#[derive(Debug)]
enum Trigger {
    Exited {
        name: String,
        state: State,
        generation: u64,
    },
    Health {
        name: String,
        status: Health,
        generation: u64,
    },
    RestartDue {
        name: String,
        generation: u64,
    },
    FileChanged,
    /// Another berth process acted on the project (its events file changed).
    Activity,
}

/// Whether log lines go out bare, between the services' own lines (a foreground `berth up`),
/// rather than stamped with the time (the detached supervisor's log file).
static BARE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Prints the supervisor's lines bare, as Compose prints its own among the services' output.
pub fn log_bare() {
    BARE.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Prints one line of the supervisor's log (stderr: the log file when detached).
pub fn log(msg: impl std::fmt::Display) {
    if BARE.load(std::sync::atomic::Ordering::Relaxed) {
        eprintln!("{msg}");
        return;
    }
    let t = crate::sys::timestamp(std::time::SystemTime::now());
    eprintln!("{} {msg}", &t[..23.min(t.len())]);
}

/// A sink that writes progress to the supervisor's log.
pub fn log_sink() -> Sink {
    Arc::new(|e: Event| {
        let what = if e.container.is_empty() {
            e.service.clone()
        } else {
            e.container.clone()
        };
        log(format!("{what}: {:?}", e.phase));
    })
}

#[derive(Default)]
struct Watch {
    generation: u64,
    tasks: Vec<AbortHandle>,
    /// Restarts so far in the current run of failures, and when it last started.
    attempts: u32,
    started: Option<Instant>,
    /// The run (its init's pid) whose end this watch reports or has reported. A container
    /// seen ended in another run ended unwatched (started by the CLI, it died before the
    /// supervisor looked), and the policy still decides for it.
    pid: Option<i32>,
    /// The end of run `pid` has been handled: the policy decided.
    done: bool,
    /// A restart waiting out its backoff: when it is due.
    restart_due: Option<Instant>,
    /// The health check's schedule, shared with the task that probes.
    health: Option<Arc<std::sync::Mutex<HealthRun>>>,
}

/// A health check's state between probes.
struct HealthRun {
    tracker: Tracker,
    due: Instant,
    probing: bool,
}

impl Watch {
    /// What an idle spell keeps of it.
    fn state(&self) -> WatchState {
        WatchState {
            pid: self.pid,
            done: self.done,
            attempts: self.attempts,
            started: self.started.map(idle::to_mono),
            restart_due: self.restart_due.map(idle::to_mono),
            health: self.health.as_ref().map(|h| {
                let h = h.lock().unwrap_or_else(|e| e.into_inner());
                HealthState {
                    status: h.tracker.status,
                    failing_streak: h.tracker.failing_streak,
                    started: idle::to_mono(h.tracker.started()),
                    due: idle::to_mono(h.due),
                }
            }),
        }
    }
}

/// Makes an idle supervisor of this process (see `idle`); returns only if it could not.
pub type GoIdle = Box<dyn FnMut(Sleep) -> IdleError + Send>;

/// The shortest wait worth an idle spell, in quiet spells before one: berth is executed again
/// when it ends, and stays awake for a quiet spell after (a health check due every 3 s keeps it
/// awake; Docker's default of 30 s lets it sleep 26 s of every 30).
const MIN_IDLE_SPELLS: u32 = 2;

pub struct Supervisor<R> {
    rt: Arc<R>,
    /// The project files and memory (`host::System`; a fake in the unit tests).
    host: Arc<dyn Host>,
    state: ProjectState,
    record: ProjectRecord,
    target: Arc<Target>,
    status: Status,
    watches: BTreeMap<String, Watch>,
    next_gen: u64,
    tx: mpsc::UnboundedSender<Trigger>,
    rx: mpsc::UnboundedReceiver<Trigger>,
    sink: Sink,
    /// Set when the events file changed: look at the containers on the next tick.
    resync_due: bool,
    /// Told once the supervisor is ready (see `on_ready`).
    ready: Option<Box<dyn FnOnce() + Send>>,
    /// The published ports it serves, and those `berth up` bound for it to serve.
    ports: crate::net::ports::Publisher,
    bound: Vec<crate::net::ports::Bound>,
    /// After how long without work it goes idle, and how (None: it never does).
    idle: Option<(Duration, GoIdle)>,
    /// Taken over from the supervisor this process was before an idle spell.
    resumed: BTreeMap<String, WatchState>,
    resumed_dns: Vec<(std::net::Ipv4Addr, std::os::fd::OwnedFd)>,
    resumed_files: Option<String>,
    /// The project files' fingerprint when they were last read (before the load, so that a
    /// save during the load shows as a change after it).
    files_read: String,
    /// No idle spell before then (one could not be prepared: say so once a minute at most).
    idle_not_before: Instant,
    /// It handled a trigger since it started or last resumed (so its log says when it goes
    /// idle).
    worked: bool,
}

/// How often the supervisor looks at its containers when no event said to.
const RESYNC_POLL: Duration = Duration::from_secs(30);

/// Loads the project the record describes: the target of a supervisor.
pub fn load_target(record: &ProjectRecord) -> Result<Target, crate::spec::LoadError> {
    let p = crate::load_project(&record.load_options())?;
    Ok(Target {
        project: p.loaded.project,
        dir: p.loaded.project_dir,
        graph: p.graph,
    })
}

/// Loads the project in the supervisor: the whole check (schema included) runs in a
/// short-lived `berth config -q`, whose messages are the error; then the file is read here
/// without the schema, so the compiled schema never lives in the supervisor. The allocator
/// gives what the load used back to the kernel.
pub fn load_in_supervisor(record: &ProjectRecord) -> Result<Target, String> {
    if let Ok(exe) = std::env::current_exe() {
        let mut cmd = std::process::Command::new(exe);
        for f in &record.files {
            cmd.arg("-f").arg(f);
        }
        cmd.arg("-p").arg(&record.name);
        cmd.arg("--project-directory").arg(&record.working_dir);
        for e in &record.env_files {
            cmd.arg("--env-file").arg(e);
        }
        for p in &record.profiles {
            cmd.arg("--profile").arg(p);
        }
        cmd.args(["config", "-q"])
            .current_dir(&record.working_dir)
            .stdin(std::process::Stdio::null());
        // Not the supervisor's blocked stop signals.
        // SAFETY: only sigprocmask runs between fork and exec (async-signal-safe).
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                crate::sys::unblock_all_signals();
                Ok(())
            });
        }
        if let Ok(out) = cmd.output()
            && !out.status.success()
        {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
    }
    let mut opts = record.load_options();
    opts.skip_schema = true;
    let r = crate::load_project(&opts).map_err(|e| e.to_string());
    release_cold_code();
    let mut p = r?;
    crate::disk::shared::stamp(&mut p.loaded.project, &p.loaded.project_dir);
    crate::disk::secrets::stamp(&mut p.loaded.project, &p.loaded.project_dir);
    // What `up` refuses before it changes anything, the supervisor refuses too: an edit that
    // shrinks a private disk keeps the last good version running (it took the container down
    // once the old one was removed).
    crate::disk::private::check_sizes(&crate::state::default_root(), &p.loaded.project)
        .map_err(|e| e.to_string())?;
    Ok(Target {
        project: p.loaded.project,
        dir: p.loaded.project_dir,
        graph: p.graph,
    })
}

/// Gives back the pages of code and constants this process touched while loading (berth's
/// parser, schema and planner, the C libraries' start-up code: megabytes the supervisor's event
/// loop does not run again), and the allocator's free memory. They are clean pages of files:
/// unmapped, they are faulted back from the page cache only where used later. The supervisor
/// lives as long as the project, and its resident code was most of its memory (measured with
/// bench/updown.sh: 5.2 MiB of 8.3 MiB PSS).
pub fn release_cold_code() {
    // What the allocator holds free goes back first.
    // SAFETY: mi_collect only returns the allocator's free memory to the OS.
    unsafe { libmimalloc_sys::mi_collect(true) };
    let exe = std::fs::read_link("/proc/self/exe")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    // smaps rather than maps: it says which mappings hold written (anonymous) pages.
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    for (header, anon_kb) in mappings(&smaps) {
        let mut f = header.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        let path = header.split_whitespace().nth(5).unwrap_or_default();
        // Only private read-only mappings of files: berth's, and the C libraries' code (libm
        // and the unwinder serve the start-up only).
        if !path.starts_with('/') || perms.contains('w') || perms.contains('s') {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else {
            continue;
        };
        let (start, len) = (a as *mut libc::c_void, b - a);
        if path == exe && !perms.contains('x') {
            // berth's constants and its relocated part (RELRO): paged out, with no read-ahead
            // after. A fault maps every neighbouring page still cached (64 KiB), so only
            // pages out of the cache come back one by one; the relocations' written pages
            // stay (paging them out would need swap).
            // SAFETY: advice on one whole mapping of this process; MADV_PAGEOUT changes no
            // memory contents (a page used again is read back, a written one is kept).
            unsafe {
                libc::madvise(start, len, libc::MADV_RANDOM);
                libc::madvise(start, len, libc::MADV_PAGEOUT);
            }
        } else if perms.contains('x') && anon_kb == Some(0) {
            // Code: unmapped only. Paging it out would gain nothing (a fault in code reads
            // ahead 2 MiB whatever the advice), and the pages stay in the page cache, where the
            // next berth command finds them. Only code, never written: a written page (a
            // RELRO's, even swapped out) would revert to the file's bytes.
            // SAFETY: the range is one whole private read-only mapping of a file in which no
            // page was ever written (smaps counts none anonymous, and a read-only mapping
            // cannot gain one); a page used again is faulted back from the page cache or the
            // file.
            unsafe { libc::madvise(start, len, libc::MADV_DONTNEED) };
        }
    }
}

/// Each mapping of an smaps text: its header line and its written pages in kB (`Anonymous:`
/// plus `Swap:`: a written page swapped out is no longer counted as anonymous).
fn mappings(smaps: &str) -> Vec<(&str, Option<u64>)> {
    let mut out: Vec<(&str, Option<u64>)> = Vec::new();
    for line in smaps.lines() {
        let field = line
            .strip_prefix("Anonymous:")
            .or_else(|| line.strip_prefix("Swap:"));
        if let Some(v) = field {
            if let (Some(last), Ok(kb)) = (
                out.last_mut(),
                v.trim().trim_end_matches("kB").trim().parse::<u64>(),
            ) {
                last.1 = Some(last.1.unwrap_or(0) + kb);
            }
        } else if line.split_whitespace().next().is_some_and(|r| {
            r.contains('-') && r.split('-').all(|h| u64::from_str_radix(h, 16).is_ok())
        }) {
            out.push((line, None));
        }
    }
    out
}

impl<R: Runtime + 'static> Supervisor<R> {
    pub fn new(
        rt: Arc<R>,
        state: ProjectState,
        record: ProjectRecord,
        target: Arc<Target>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let ports = crate::net::ports::Publisher::new(
            state.root(),
            state.dir().to_path_buf(),
            target.project.name.clone(),
        );
        let mut status = state.status();
        status.invalid = None;
        Supervisor {
            rt,
            host: Arc::new(super::host::System),
            state,
            record,
            target,
            status,
            watches: BTreeMap::new(),
            next_gen: 1,
            tx,
            rx,
            sink: log_sink(),
            resync_due: false,
            ready: None,
            ports,
            bound: Vec::new(),
            idle: None,
            resumed: BTreeMap::new(),
            resumed_dns: Vec::new(),
            resumed_files: None,
            files_read: String::new(),
            idle_not_before: Instant::now(),
            worked: true,
        }
    }

    /// What it loads and watches the project files with, and gives memory back through.
    pub fn with_host(mut self, host: Arc<dyn Host>) -> Self {
        self.host = host;
        self
    }

    /// The fingerprint (`idle::fingerprint`) of the project files read for `target`.
    pub fn files_read(mut self, fingerprint: String) -> Self {
        self.files_read = fingerprint;
        self
    }

    /// Goes idle after `after` without work, through `go` (a detached supervisor only: the
    /// foreground `berth up` streams logs and stays).
    pub fn idle_after(mut self, after: Duration, go: GoIdle) -> Self {
        self.idle = Some((after, go));
        self
    }

    /// Carries on from an idle spell: the restart counts, backoffs and health schedules it
    /// handed over, and its DNS sockets (`dns`: the handoff's descriptors, now owned here).
    pub fn resume(
        mut self,
        h: Handoff,
        dns: Vec<(std::net::Ipv4Addr, std::os::fd::OwnedFd)>,
    ) -> Self {
        self.resumed = h.watches;
        self.resumed_dns = dns;
        self.files_read = h.files.clone();
        self.resumed_files = Some(h.files);
        // A broken edit read before the idle spell is still what the file holds.
        self.status.invalid = self.state.status().invalid;
        self.worked = false;
        self
    }

    /// The published ports `berth up` bound, for this supervisor to serve.
    pub fn with_ports(mut self, bound: Vec<crate::net::ports::Bound>) -> Self {
        self.bound = bound;
        self
    }

    /// `f` runs once the supervisor answers for the project: its names resolve and its files
    /// are watched (`berth up -d` returns only then, so a name looked up at once resolves).
    pub fn on_ready(mut self, f: impl FnOnce() + Send + 'static) -> Self {
        self.ready = Some(Box::new(f));
        self
    }

    fn save(&self) {
        if let Err(e) = self.state.write_status(&self.status) {
            log(format!("cannot write status: {e}"));
        }
    }

    /// Runs until `shutdown` resolves, or until it goes idle (this process then becomes
    /// berth-idle: `idle_after`). Containers are left as they are.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        let _watcher = self.watch_files();
        if let Some(before) = self.resumed_files.take()
            && self.host.fingerprint(&self.record.watched()) != before
        {
            // Saved while it was idle: berth-idle woke it for this.
            let _ = self.tx.send(Trigger::FileChanged);
        }
        // The project's names, on each of its networks (containers come and go: refreshed
        // whenever the events file says something happened).
        let dns = crate::net::dns::Dns::new(self.state.root(), self.target.project.name.clone());
        dns.adopt(std::mem::take(&mut self.resumed_dns));
        for e in dns.refresh() {
            log(e);
        }
        for e in self.ports.serve(std::mem::take(&mut self.bound)) {
            log(e);
        }
        if let Some(f) = self.ready.take() {
            f();
        }
        self.arm_all().await;
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // After a burst of work (the start, an edit, a restart) has been quiet for a few
        // seconds, the code it ran is given back (see `release_cold_code`).
        let mut busy_since: Option<Instant> = Some(Instant::now());
        let mut quiet_since = Instant::now();
        let mut last_resync = Instant::now();
        loop {
            let t = tokio::select! {
                // A stop comes first: never an idle spell while one waits.
                biased;
                _ = &mut shutdown => None,
                t = self.rx.recv() => t,
                _ = tick.tick() => {
                    // A state root deleted under it (a test's temporary one, or wiped by hand):
                    // nothing is left to keep converged.
                    if !self.state.dir().is_dir() {
                        log("the project's state directory is gone: stopping");
                        break;
                    }
                    // Events say when to look; the slow poll covers a watch that failed.
                    if self.resync_due || last_resync.elapsed() >= RESYNC_POLL {
                        self.resync_due = false;
                        last_resync = Instant::now();
                        self.resync().await;
                        for e in dns.refresh() {
                            log(e);
                        }
                        self.ports.refresh();
                        // Reading every container's record runs code too: give it back after.
                        busy_since.get_or_insert_with(Instant::now);
                    }
                    if self
                        .idle
                        .as_ref()
                        .is_some_and(|(after, _)| quiet_since.elapsed() >= *after)
                        && Instant::now() >= self.idle_not_before
                        && let Some(sleep) = self.sleep(&dns)
                        && let Some((_, go)) = self.idle.as_mut()
                    {
                        // Returns only if this process could not become berth-idle.
                        let e = go(sleep);
                        log(format!("cannot go idle, staying awake: {e}"));
                        self.idle = None;
                    }
                    if busy_since.is_some_and(|t| t.elapsed() >= Duration::from_secs(3)) {
                        self.host.release_memory();
                        busy_since = None;
                    }
                    continue;
                }
            };
            let Some(t) = t else { break };
            self.handle(t).await;
            self.worked = true;
            busy_since = Some(Instant::now());
            quiet_since = Instant::now();
        }
        for w in self.watches.values() {
            for t in &w.tasks {
                t.abort();
            }
        }
        dns.stop();
        self.ports.stop();
    }

    /// What an idle spell needs, if this is a good time for one: nothing in flight (a probe,
    /// a proxied connection, a DNS query forwarded, a trigger queued) and nothing due within
    /// `MIN_IDLE`.
    fn sleep(&mut self, dns: &crate::net::dns::Dns) -> Option<Sleep> {
        if !self.rx.is_empty() || self.resync_due || self.ports.busy() || dns.busy() {
            return None;
        }
        let mut next: Option<Instant> = None;
        for w in self.watches.values() {
            if let Some(h) = &w.health {
                let h = h.lock().unwrap_or_else(|e| e.into_inner());
                if h.probing {
                    return None;
                }
                next = Some(next.map_or(h.due, |n| n.min(h.due)));
            }
            if let Some(d) = w.restart_due {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        }
        let quiet = self
            .idle
            .as_ref()
            .map_or(Duration::ZERO, |(after, _)| *after);
        let min = (quiet * MIN_IDLE_SPELLS).max(Duration::from_secs(1));
        if next.is_some_and(|d| d < Instant::now() + min) {
            return None;
        }
        let mut wake = Vec::new();
        for w in self.watches.values() {
            let (Some(pid), false) = (w.pid, w.done) else {
                continue;
            };
            // A run whose end is not handled yet must still be there to wait on.
            let fd = rustix::process::Pid::from_raw(pid).and_then(|p| {
                rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
            })?;
            wake.push(fd);
        }
        let files = self.record.watched();
        let events = crate::state::events_path(&self.state.root(), &self.target.project.name);
        let prepared = next
            .map(|d| idle::timer(idle::to_mono(d)))
            .transpose()
            .and_then(|t| Ok((t, idle::watch(&files, &events, self.state.dir())?)));
        let (timer, (inotify, names)) = match prepared {
            Ok(p) => p,
            Err(e) => {
                log(format!("cannot go idle (trying again in a minute): {e}"));
                self.idle_not_before = Instant::now() + Duration::from_secs(60);
                return None;
            }
        };
        wake.extend(timer);
        // A socket that cannot be duplicated would be left behind: no idle spell then.
        let dns_socks = dns.sockets()?;
        let ports = self.ports.sockets()?;
        let handoff = Handoff {
            project: self.target.project.clone(),
            dir: self.target.dir.clone(),
            files: self.files_read.clone(),
            ports: self.ports.bindings(),
            watches: self
                .watches
                .iter()
                .map(|(n, w)| (n.clone(), w.state()))
                .collect(),
            dns: dns_socks
                .iter()
                .map(|(gw, fd)| (*gw, std::os::fd::AsRawFd::as_raw_fd(fd)))
                .collect(),
        };
        // Said once per burst of work, not after each health check.
        if self.worked {
            log(format!(
                "idle: waiting in berth-idle on {} container(s){}",
                wake.len() - usize::from(next.is_some()),
                match next {
                    Some(d) => format!(
                        ", next timer in {:.1} s",
                        d.saturating_duration_since(Instant::now()).as_secs_f64()
                    ),
                    None => String::new(),
                }
            ));
        }
        Some(Sleep {
            handoff,
            ports,
            dns: dns_socks.into_iter().map(|(_, fd)| fd).collect(),
            wake,
            inotify,
            names,
        })
    }

    fn watch_files(&self) -> Option<Box<dyn std::any::Any + Send>> {
        // Every berth process that acts on a container appends to the project's events file:
        // watching it tells the supervisor when to look again, instead of polling.
        let events = crate::state::events_path(&self.state.root(), &self.target.project.name);
        let tx = self.tx.clone();
        self.host.watch(
            &self.record.watched(),
            &events,
            Box::new(move |c| {
                let _ = tx.send(match c {
                    Change::Files => Trigger::FileChanged,
                    Change::Activity => Trigger::Activity,
                });
            }),
        )
    }

    /// Watches every container of the project afresh (after start and after each re-plan).
    async fn arm_all(&mut self) {
        for w in self.watches.values_mut() {
            for t in w.tasks.drain(..) {
                t.abort();
            }
        }
        let observed = match self.rt.observe(&self.target.project.name).await {
            Ok(o) => o,
            Err(e) => {
                log(format!("observe: {e}"));
                return;
            }
        };
        let names: Vec<String> = observed.containers.iter().map(|c| c.name.clone()).collect();
        self.watches.retain(|n, _| names.contains(n));
        self.status.containers.retain(|n, _| names.contains(n));
        let mut resumed = std::mem::take(&mut self.resumed);
        for c in observed.containers {
            // What this process knew of it before an idle spell, if it was the same run.
            let r = resumed.remove(&c.name).filter(|r| r.pid == c.pid);
            if let Some(r) = &r {
                let w = self.watches.entry(c.name.clone()).or_default();
                w.pid = r.pid;
                w.done = r.done;
                w.attempts = r.attempts;
                w.started = r.started.map(idle::from_mono);
            }
            let w = self.watches.get(&c.name).filter(|w| w.pid == c.pid);
            // Its restart was waiting out the backoff (before an idle spell or an edit).
            let due = r
                .as_ref()
                .and_then(|r| r.restart_due.map(idle::from_mono))
                .or(w.and_then(|w| w.restart_due));
            // Its end was handled already: the policy left it down.
            let handled = w.is_some_and(|w| w.done);
            if c.state == State::Running {
                self.arm_with(&c.name, c.pid, r.and_then(|r| r.health));
            } else if let Some(due) = due {
                self.schedule_restart(&c.name, due);
            } else if handled {
            } else if !matches!(c.state, State::Created) {
                // Ended while nobody watched (between two supervisors): the policy decides,
                // counting the restarts it already had (a crash loop that gave up stays down).
                let had = self
                    .status
                    .containers
                    .get(&c.name)
                    .map_or(0, |s| s.restarts);
                self.unwatched_end(&c, had);
            }
        }
        self.save();
    }

    /// A run of `c` that ended with nobody watching: the policy decides, as for a watched one.
    fn unwatched_end(&mut self, c: &crate::plan::ObservedContainer, had: u32) {
        let w = self.watches.entry(c.name.clone()).or_default();
        if w.started.is_none() {
            w.attempts = had;
        }
        w.pid = c.pid;
        let generation = self.fresh_gen(&c.name);
        let _ = self.tx.send(Trigger::Exited {
            name: c.name.clone(),
            state: c.state,
            generation,
        });
    }

    /// Watches containers that run without a watch: started again by `berth start` or
    /// `restart` after their exit was seen (the CLI verbs do not go through the supervisor).
    async fn resync(&mut self) {
        let Ok(observed) = self.rt.observe(&self.target.project.name).await else {
            return;
        };
        for c in observed.containers {
            let w = self.watches.get(&c.name);
            let idle = w.is_none_or(|w| w.tasks.iter().all(|t| t.is_finished()));
            if !idle {
                continue;
            }
            if c.state == State::Running {
                if let Some(s) = self.status.containers.get_mut(&c.name) {
                    s.restarting = false;
                }
                self.arm(&c.name, c.pid);
                self.save();
            } else if c.state != State::Created
                && c.pid.is_some()
                && w.is_some_and(|w| w.pid != c.pid)
            {
                // Started outside the supervisor and ended before it looked.
                let had = self
                    .status
                    .containers
                    .get(&c.name)
                    .map_or(0, |s| s.restarts);
                self.unwatched_end(&c, had);
            }
        }
    }

    fn fresh_gen(&mut self, name: &str) -> u64 {
        self.next_gen += 1;
        let g = self.next_gen;
        let w = self.watches.entry(name.to_string()).or_default();
        for t in w.tasks.drain(..) {
            t.abort();
        }
        w.generation = g;
        w.health = None;
        w.restart_due = None;
        g
    }

    /// Waits for the end of the container's run `pid` and runs its health checks.
    fn arm(&mut self, name: &str, pid: Option<i32>) {
        self.arm_with(name, pid, None);
    }

    /// As `arm`, with the health check's schedule and counters of before an idle spell.
    fn arm_with(&mut self, name: &str, pid: Option<i32>, health: Option<HealthState>) {
        let generation = self.fresh_gen(name);
        if let Some(w) = self.watches.get_mut(name) {
            w.pid = pid;
            w.done = false;
        }
        let mut tasks = Vec::new();
        let rt = self.rt.clone();
        let tx = self.tx.clone();
        let n = name.to_string();
        tasks.push(
            tokio::spawn(async move {
                if let Ok(state) = rt.wait(&n).await {
                    let _ = tx.send(Trigger::Exited {
                        name: n,
                        state,
                        generation,
                    });
                }
            })
            .abort_handle(),
        );
        let mut shared = None;
        if let Ok(Some(spec)) = self.rt.healthcheck(name) {
            let rt = self.rt.clone();
            let tx = self.tx.clone();
            let n = name.to_string();
            // A health already known for this run (from `up --wait`, or the supervisor this one
            // replaces) stands until a probe says otherwise; an exit clears it.
            let entry = self.status.containers.entry(n.clone()).or_default();
            let known = *entry.health.get_or_insert(Health::Starting);
            let now = Instant::now();
            let (tracker, due) = match health {
                Some(h) => (
                    Tracker::resumed(h.status, h.failing_streak, idle::from_mono(h.started)),
                    idle::from_mono(h.due),
                ),
                None => {
                    let mut t = Tracker::new(now);
                    t.status = known;
                    let due = now + t.next_delay(&spec, now);
                    (t, due)
                }
            };
            let mut last = tracker.status;
            let run = Arc::new(std::sync::Mutex::new(HealthRun {
                tracker,
                due,
                probing: false,
            }));
            shared = Some(run.clone());
            // The lock is held for a few assignments only, never across an await.
            let due_of =
                |r: &std::sync::Mutex<HealthRun>| r.lock().unwrap_or_else(|e| e.into_inner()).due;
            tasks.push(
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep_until(due_of(&run).into()).await;
                        run.lock().unwrap_or_else(|e| e.into_inner()).probing = true;
                        let probed = rt.probe(&n, &spec.argv, spec.timeout).await;
                        let mut r = run.lock().unwrap_or_else(|e| e.into_inner());
                        r.probing = false;
                        let Ok((code, out)) = probed else {
                            return;
                        };
                        let now = Instant::now();
                        let s = r.tracker.record(&spec, now, code, &out);
                        r.due = now + r.tracker.next_delay(&spec, now);
                        drop(r);
                        if s != last {
                            last = s;
                            let _ = tx.send(Trigger::Health {
                                name: n.clone(),
                                status: s,
                                generation,
                            });
                        }
                    }
                })
                .abort_handle(),
            );
        }
        if let Some(w) = self.watches.get_mut(name) {
            w.tasks = tasks;
            w.health = shared;
            if w.started.is_none() {
                w.started = Some(Instant::now());
            }
        }
    }

    /// Records an event only the supervisor sees (an exit, a health change).
    fn event(&self, name: &str, action: &str, attrs: &[(&str, String)]) {
        let service = self.service_of(name).unwrap_or_default().to_string();
        crate::state::append_event(
            &self.state.root(),
            &self.target.project.name,
            action,
            name,
            &service,
            attrs,
        );
    }

    fn current(&self, name: &str, generation: u64) -> bool {
        self.watches
            .get(name)
            .is_some_and(|w| w.generation == generation)
    }

    /// The service a container belongs to, in the current target.
    fn service_of(&self, name: &str) -> Option<&str> {
        let p = &self.target.project;
        p.services
            .iter()
            .find(|(s, def)| {
                (1..=def.replicas().max(1))
                    .any(|i| crate::plan::container_name(&p.name, s, def, i) == name)
            })
            .map(|(s, _)| s.as_str())
    }

    fn policy(&self, name: &str) -> Option<Policy> {
        let s = self.service_of(name)?;
        Some(Policy::of(&self.target.project.services[s]))
    }

    async fn handle(&mut self, t: Trigger) {
        match t {
            Trigger::Exited {
                name,
                state,
                generation,
            } if self.current(&name, generation) => {
                // Another berth process may have started a new run already (`berth restart`
                // stops and starts at once): that run is what to watch, and the end of the one
                // before is not a crash for the policy to answer (its restart would start a
                // running container, and nobody would watch the new run).
                let watched = self.watches.get(&name).and_then(|w| w.pid);
                match running(&*self.rt, &self.target.project.name, &name).await {
                    Some(pid) if pid != watched => {
                        // The run before ended all the same: its end is recorded, its health
                        // gone (the new run's starts afresh).
                        self.record_end(&name, state, false);
                        self.watch_new_run(&name, pid);
                    }
                    _ => self.exited(&name, state),
                }
            }
            Trigger::Health {
                name,
                status,
                generation,
            } if self.current(&name, generation) => {
                log(format!("{name}: {}", status.as_str()));
                self.event(&name, &format!("health_status: {}", status.as_str()), &[]);
                self.status
                    .containers
                    .entry(name.clone())
                    .or_default()
                    .health = Some(status);
                self.save();
                if super::decide::on_health(
                    self.policy(&name).as_ref(),
                    self.state.is_stopped(&name),
                    status,
                ) {
                    log(format!("{name}: unhealthy, restarting it (restart policy)"));
                    let service = self.service_of(&name).unwrap_or_default().to_string();
                    let grace = self.target.grace(&service, &Options::default());
                    if let Err(e) = self.rt.stop(&name, grace).await {
                        log(format!("{name}: stop: {e}"));
                    }
                    // The container's watcher reports the exit; the policy restarts it.
                }
            }
            Trigger::RestartDue { name, generation } if self.current(&name, generation) => {
                self.restart_now(&name).await
            }
            Trigger::FileChanged => self.file_changed().await,
            Trigger::Activity => self.resync_due = true,
            _ => {} // a trigger from a watch that has been replaced
        }
    }

    /// Watches a run that another berth command started.
    fn watch_new_run(&mut self, name: &str, pid: Option<i32>) {
        log(format!(
            "{name}: running again (started by another berth command)"
        ));
        self.arm(name, pid);
        self.save();
    }

    /// What every end of a run records: its events, its exit code, no health any more.
    fn record_end(&mut self, name: &str, state: State, restarting: bool) -> i32 {
        let code = match state {
            State::Exited(c) => c,
            State::OomKilled => 137,
            _ => 0,
        };
        self.event(name, "die", &[("exitCode", code.to_string())]);
        if state == State::OomKilled {
            self.event(name, "oom", &[]);
        }
        let st = self.status.containers.entry(name.to_string()).or_default();
        st.last_exit = Some(code);
        st.health = None;
        st.restarting = restarting;
        self.save();
        code
    }

    fn exited(&mut self, name: &str, state: State) {
        let policy = self.policy(name);
        let user_stopped = self.state.is_stopped(name);
        // The run is over: so is its health check (a prober left sleeping until its next probe
        // made `resync` think the container still watched, and a run started by `berth start`
        // then went unwatched), and a late trigger of the run is stale.
        self.fresh_gen(name);
        let w = self.watches.entry(name.to_string()).or_default();
        w.done = true;
        let decision = super::decide::on_exit(
            policy.as_ref(),
            super::decide::Ended {
                state,
                user_stopped,
                attempts: w.attempts,
                ran_for: w.started.map(|s| s.elapsed()),
            },
        );
        w.attempts = decision.attempts;
        let code = self.record_end(name, state, decision.restart_after.is_some());
        let Some(delay) = decision.restart_after else {
            // Compose's line for an exit.
            log(format!("{name} exited with code {code}"));
            return;
        };
        log(format!(
            "{name} exited with code {code}; restart {} in {delay:?}",
            decision.attempts + 1
        ));
        self.schedule_restart(name, Instant::now() + delay);
    }

    /// Restarts `name` at `due` (the end of its backoff).
    fn schedule_restart(&mut self, name: &str, due: Instant) {
        let generation = self.fresh_gen(name);
        let tx = self.tx.clone();
        let n = name.to_string();
        let h = tokio::spawn(async move {
            tokio::time::sleep_until(due.into()).await;
            let _ = tx.send(Trigger::RestartDue {
                name: n,
                generation,
            });
        });
        if let Some(w) = self.watches.get_mut(name) {
            w.tasks.push(h.abort_handle());
            w.restart_due = Some(due);
            w.done = true;
        }
    }

    async fn restart_now(&mut self, name: &str) {
        if let Some(w) = self.watches.get_mut(name) {
            w.restart_due = None;
        }
        // Started meanwhile by another berth command (`berth start`, `restart`): watched, not
        // started again nor counted as a restart.
        if let Some(pid) = running(&*self.rt, &self.target.project.name, name).await {
            if let Some(st) = self.status.containers.get_mut(name) {
                st.restarting = false;
            }
            self.watch_new_run(name, pid);
            return;
        }
        let r = self.rt.start(name).await;
        let w = self.watches.entry(name.to_string()).or_default();
        w.attempts += 1;
        w.started = Some(Instant::now());
        let attempts = w.attempts;
        let st = self.status.containers.entry(name.to_string()).or_default();
        st.restarting = false;
        st.restarts = st.restarts.saturating_add(1);
        match r {
            Ok(()) => {
                log(format!("{name}: restarted ({attempts})"));
                let pid = match self.rt.observe(&self.target.project.name).await {
                    Ok(o) => o
                        .containers
                        .into_iter()
                        .find(|c| c.name == name)
                        .and_then(|c| c.pid),
                    Err(_) => None,
                };
                self.arm(name, pid);
                self.save();
            }
            Err(e) => {
                log(format!("{name}: restart failed: {e}"));
                self.exited(name, State::Exited(-1));
            }
        }
    }

    async fn file_changed(&mut self) {
        // Debounce: an editor's save is several events; act once they have settled.
        loop {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let mut more = false;
            while let Ok(t) = self.rx.try_recv() {
                match t {
                    Trigger::FileChanged => more = true,
                    other => Box::pin(self.handle(other)).await,
                }
            }
            if !more {
                break;
            }
        }
        self.files_read = self.host.fingerprint(&self.record.watched());
        let target = match self.host.load(&self.record) {
            Ok(t) => Arc::new(t),
            Err(msg) => {
                log(format!(
                    "the project file does not load; the last good version keeps running:\n{msg}"
                ));
                self.status.invalid = Some(msg);
                self.save();
                return;
            }
        };
        self.status.invalid = None;
        self.target = target.clone();
        let observed = match self.rt.observe(&target.project.name).await {
            Ok(o) => o,
            Err(e) => {
                log(format!("observe: {e}"));
                return;
            }
        };
        let mut plan = diff(&target.project, &target.dir, &target.graph, &observed);
        // An edit changes what changed: containers that are down (a finished job, a crash loop
        // that gave up, one the user stopped) stay as they are.
        plan.actions.retain(|a| !matches!(a, Action::Start { .. }));
        if plan.is_empty() {
            log("project file saved; nothing to change");
            self.save();
            return;
        }
        log(format!(
            "project file saved; applying {} step(s)",
            plan.actions.len()
        ));
        for w in self.watches.values_mut() {
            for t in w.tasks.drain(..) {
                t.abort();
            }
        }
        let failures = apply(
            self.rt.clone(),
            target,
            &plan,
            &observed.containers,
            Options::default(),
            self.sink.clone(),
        )
        .await;
        for f in failures {
            log(format!("failed: {f}"));
        }
        self.converge_ports();
        self.arm_all().await;
    }

    /// Serves the ports the file publishes now (after an edit).
    fn converge_ports(&mut self) {
        // No file positions here (the supervisor keeps no file tree): the key path says where.
        let locate = |s: &str, p: &crate::spec::model::Port| {
            format!("services.{s}.ports ({}/{})", p.target, p.protocol)
        };
        if let Err(e) = crate::net::ports::check(&self.target.project, &locate) {
            log(format!("ports: {e}"));
            return;
        }
        let (wants, warnings) = crate::net::ports::wants(&self.target.project, &locate);
        self.ports.refresh();
        for e in warnings
            .into_iter()
            .chain(self.ports.converge(&wants, &locate))
        {
            log(format!("ports: {e}"));
        }
    }
}

/// The pid of `name`'s run if it is running now.
async fn running<R: Runtime>(rt: &R, project: &str, name: &str) -> Option<Option<i32>> {
    let o = rt.observe(project).await.ok()?;
    o.containers
        .into_iter()
        .find(|c| c.name == name && c.state == State::Running)
        .map(|c| c.pid)
}

#[cfg(test)]
mod tests {
    #[test]
    fn smaps_mappings_carry_their_anonymous_size() {
        let text = "00200000-00600000 r--p 00000000 fd:01 12 /bin/berth\nSize:  4096 kB\n\
                    Anonymous:             0 kB\nVmFlags: rd mr mw me\n\
                    01401000-01497000 r--p 011ff000 fd:01 12 /bin/berth\nRss:  40 kB\n\
                    Anonymous:            40 kB\nSwap:      8 kB\n\
                    7ffe0000-7fff0000 rw-p 00000000 00:00 0 [stack]\n";
        let m = super::mappings(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].1, Some(0));
        assert!(m[1].0.starts_with("01401000-01497000 r--p"));
        assert_eq!(m[1].1, Some(48));
        assert_eq!(m[2].1, None);
    }
}

#[cfg(test)]
#[path = "supervisor_tests.rs"]
mod supervisor_tests;
