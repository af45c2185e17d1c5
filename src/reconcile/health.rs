//! Health checks: the schedule and the status rules Docker applies, kept pure so the rules are
//! unit-tested without a container, and the loop that probes a running container through the
//! runtime.

use std::time::{Duration, Instant};

use crate::runtime::{HealthSpec, Runtime};

/// A container's health, as `ps` shows it: state's type, which the supervisor writes.
pub use crate::state::Health as Status;

/// Docker's rules: a probe that succeeds makes the container healthy; `retries` failures in a
/// row make it unhealthy, except that failures inside `start_period` do not count (a success
/// there still counts). During `start_period` probes run every `start_interval`, after it every
/// `interval`; the first probe comes one period after the start.
#[derive(Debug, Clone)]
pub struct Tracker {
    pub status: Status,
    pub failing_streak: u32,
    pub last_output: String,
    started: Instant,
}

impl Tracker {
    pub fn new(started: Instant) -> Tracker {
        Tracker {
            status: Status::Starting,
            failing_streak: 0,
            last_output: String::new(),
            started,
        }
    }

    /// A tracker as it was before an idle spell (its counters, and when its watch began).
    pub fn resumed(status: Status, failing_streak: u32, started: Instant) -> Tracker {
        Tracker {
            status,
            failing_streak,
            last_output: String::new(),
            started,
        }
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    fn in_start_period(&self, spec: &HealthSpec, now: Instant) -> bool {
        now.saturating_duration_since(self.started) < spec.start_period
    }

    /// How long to wait before the next probe.
    pub fn next_delay(&self, spec: &HealthSpec, now: Instant) -> Duration {
        if self.status == Status::Starting && self.in_start_period(spec, now) {
            spec.start_interval
        } else {
            spec.interval
        }
    }

    /// Records a probe's result (exit status 0 is a success); returns the new status.
    pub fn record(&mut self, spec: &HealthSpec, now: Instant, code: i32, output: &str) -> Status {
        self.last_output = output.chars().take(4096).collect();
        if code == 0 {
            self.failing_streak = 0;
            self.status = Status::Healthy;
        } else if !(self.status == Status::Starting && self.in_start_period(spec, now)) {
            self.failing_streak += 1;
            if self.failing_streak >= spec.retries.max(1) {
                self.status = Status::Unhealthy;
            }
        }
        self.status
    }
}

/// Probes `name` until it is healthy (`Ok`) or unhealthy or gone (`Err` with the reason).
pub async fn wait_healthy<R: Runtime>(rt: &R, name: &str, spec: &HealthSpec) -> Result<(), String> {
    let mut t = Tracker::new(Instant::now());
    loop {
        tokio::time::sleep(t.next_delay(spec, Instant::now())).await;
        match rt.probe(name, &spec.argv, spec.timeout).await {
            Ok((code, out)) => match t.record(spec, Instant::now(), code, &out) {
                Status::Healthy => return Ok(()),
                Status::Unhealthy => {
                    let out = t.last_output.trim();
                    return Err(if out.is_empty() {
                        format!("is unhealthy (the check exited with {code})")
                    } else {
                        format!("is unhealthy (the check exited with {code}: {out})")
                    });
                }
                Status::Starting => {}
            },
            Err(e) => return Err(format!("exited before it was healthy ({e})")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> HealthSpec {
        HealthSpec {
            argv: vec!["true".into()],
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            retries: 3,
            start_period: Duration::from_secs(30),
            start_interval: Duration::from_secs(1),
        }
    }

    #[test]
    fn failures_in_the_start_period_do_not_count() {
        let s = spec();
        let t0 = Instant::now();
        let mut t = Tracker::new(t0);
        assert_eq!(t.next_delay(&s, t0), Duration::from_secs(1));
        for i in 0..10 {
            assert_eq!(
                t.record(&s, t0 + Duration::from_secs(i), 1, "no"),
                Status::Starting
            );
        }
        assert_eq!(t.failing_streak, 0);
        let late = t0 + Duration::from_secs(31);
        assert_eq!(t.next_delay(&s, late), Duration::from_secs(10));
        assert_eq!(t.record(&s, late, 1, ""), Status::Starting);
        assert_eq!(t.record(&s, late, 1, ""), Status::Starting);
        assert_eq!(t.record(&s, late, 1, "down"), Status::Unhealthy);
        assert_eq!(t.last_output, "down");
    }

    #[test]
    fn a_success_resets_the_streak_and_counts_in_the_start_period() {
        let s = spec();
        let t0 = Instant::now();
        let mut t = Tracker::new(t0);
        assert_eq!(t.record(&s, t0, 0, ""), Status::Healthy);
        let late = t0 + Duration::from_secs(60);
        assert_eq!(t.next_delay(&s, t0), Duration::from_secs(10));
        t.record(&s, late, 1, "");
        t.record(&s, late, 1, "");
        assert_eq!(t.record(&s, late, 0, ""), Status::Healthy);
        assert_eq!(t.failing_streak, 0);
        // A healthy container that starts failing turns unhealthy after `retries`, even inside
        // the start period.
        let mut t = Tracker::new(t0);
        t.record(&s, t0, 0, "");
        for _ in 0..2 {
            assert_eq!(t.record(&s, t0, 1, ""), Status::Healthy);
        }
        assert_eq!(t.record(&s, t0, 1, ""), Status::Unhealthy);
    }
}
