//! What the supervisor does when a container's run ends or its health changes, decided in pure
//! code: the supervisor gathers the facts (the policy, whether the user stopped it, how many
//! restarts it has had, how long it ran) and carries out the answer (a timer, a stop). So crash
//! loops, long runs that reset the backoff, and health flaps are unit-tested in microseconds,
//! without a container or a clock.

use std::time::Duration;

use super::restart::{Policy, RESET_AFTER};
use crate::plan::State;
use crate::state::Health;

/// What is known of a run that just ended.
#[derive(Debug, Clone, Copy)]
pub struct Ended {
    pub state: State,
    /// `berth stop` (or `down`) ended it: no policy restarts it.
    pub user_stopped: bool,
    /// Restarts so far in this series of failures.
    pub attempts: u32,
    /// How long the run lasted, when its start was seen.
    pub ran_for: Option<Duration>,
}

/// The answer to an ended run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OnExit {
    /// The restart count from now on: reset to 0 after a run that lasted `RESET_AFTER`.
    pub attempts: u32,
    /// Start it again after this delay; None: it stays down.
    pub restart_after: Option<Duration>,
}

/// Docker's rules: the policy decides whether the container starts again; the delay doubles
/// with each restart of a series, and a run that lasted `RESET_AFTER` (or the policy's
/// `deploy.restart_policy.window`) or more starts a new series.
pub fn on_exit(policy: Option<&Policy>, e: Ended) -> OnExit {
    let window = policy.and_then(|p| p.window).unwrap_or(RESET_AFTER);
    let attempts = if e.ran_for.is_some_and(|d| d >= window) {
        0
    } else {
        e.attempts
    };
    let restart_after = policy
        .filter(|_| !e.user_stopped)
        .filter(|p| p.restarts(e.state, attempts))
        .map(|p| p.backoff(attempts));
    OnExit {
        attempts,
        restart_after,
    }
}

/// Whether a health change stops the container for its policy to restart it: only a turn to
/// unhealthy, of a container whose policy restarts unhealthy ones, that the user has not
/// stopped.
pub fn on_health(policy: Option<&Policy>, user_stopped: bool, status: Health) -> bool {
    status == Health::Unhealthy && !user_stopped && policy.is_some_and(|p| p.on_unhealthy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::model::{Restart, Service};

    fn policy(restart: &str) -> Policy {
        Policy::of(&Service {
            restart: Some(Restart(restart.into())),
            ..Service::default()
        })
    }

    fn ended(state: State, attempts: u32, ran_ms: u64) -> Ended {
        Ended {
            state,
            user_stopped: false,
            attempts,
            ran_for: Some(Duration::from_millis(ran_ms)),
        }
    }

    /// A container that crashes at once, again and again: each restart waits twice as long,
    /// up to the ceiling, and `always` never gives up.
    #[test]
    fn a_crash_loop_backs_off_and_always_restarts() {
        let p = policy("always");
        let mut attempts = 0;
        let mut delays = Vec::new();
        for _ in 0..12 {
            let d = on_exit(Some(&p), ended(State::Exited(1), attempts, 50));
            delays.push(d.restart_after.expect("always restarts"));
            attempts = d.attempts + 1; // the supervisor counts the restart it makes
        }
        assert_eq!(delays[0], Duration::from_millis(100));
        assert_eq!(delays[1], Duration::from_millis(200));
        assert_eq!(delays[4], Duration::from_millis(1600));
        assert_eq!(delays[11], super::super::restart::MAX_DELAY);
    }

    /// A run that lasted past RESET_AFTER starts a new series: the next restart is quick again,
    /// and `on-failure:N` counts from zero.
    #[test]
    fn a_long_run_resets_the_series() {
        let p = policy("on-failure:2");
        let d = on_exit(Some(&p), ended(State::Exited(3), 2, 50));
        assert_eq!(
            d.restart_after, None,
            "two restarts used, a quick crash stays down"
        );
        let d = on_exit(Some(&p), ended(State::Exited(3), 2, 10_000));
        assert_eq!(d.attempts, 0);
        assert_eq!(d.restart_after, Some(Duration::from_millis(100)));
    }

    /// `deploy.restart_policy.window`: a run that outlasted it was a success, and the
    /// attempts count again from zero; a failure inside it counts against `max_attempts`.
    #[test]
    fn the_policy_window_decides_what_counts_as_a_success() {
        let mut p = policy("on-failure:1");
        p.window = Some(Duration::from_secs(2));
        assert_eq!(
            on_exit(Some(&p), ended(State::Exited(1), 1, 1_500)).restart_after,
            None
        );
        let d = on_exit(Some(&p), ended(State::Exited(1), 1, 2_500));
        assert_eq!((d.attempts, d.restart_after.is_some()), (0, true));
    }

    #[test]
    fn what_stays_down() {
        // A clean exit under on-failure; anything under `no`; anything the user stopped.
        assert_eq!(
            on_exit(Some(&policy("on-failure")), ended(State::Exited(0), 0, 50)).restart_after,
            None
        );
        assert_eq!(
            on_exit(Some(&policy("no")), ended(State::Exited(1), 0, 50)).restart_after,
            None
        );
        let mut e = ended(State::Exited(137), 0, 50);
        e.user_stopped = true;
        assert_eq!(on_exit(Some(&policy("always")), e).restart_after, None);
        assert_eq!(
            on_exit(None, ended(State::Exited(1), 0, 50)).restart_after,
            None
        );
        // An OOM kill is a failure.
        assert!(
            on_exit(Some(&policy("on-failure")), ended(State::OomKilled, 0, 50))
                .restart_after
                .is_some()
        );
    }

    /// Health flaps: only a turn to unhealthy restarts, only with a policy that restarts, and
    /// never a container the user stopped.
    #[test]
    fn health_restarts_only_what_the_policy_restarts() {
        let always = policy("always");
        assert!(on_health(Some(&always), false, Health::Unhealthy));
        assert!(!on_health(Some(&always), false, Health::Healthy));
        assert!(!on_health(Some(&always), false, Health::Starting));
        assert!(!on_health(Some(&always), true, Health::Unhealthy));
        assert!(!on_health(Some(&policy("no")), false, Health::Unhealthy));
        assert!(!on_health(None, false, Health::Unhealthy));
    }
}
