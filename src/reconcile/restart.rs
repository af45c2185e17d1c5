//! Restart policies: when a container that ended is started again, and after how long. Pure,
//! so the rules are unit-tested without a container; the supervisor applies them.

use std::time::Duration;

use crate::plan::State;
use crate::spec::model::Service;

/// The first delay of the backoff when the file gives none (Docker's), and its ceiling.
pub const BASE_DELAY: Duration = Duration::from_millis(100);
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// A container that ran this long before it ended starts a fresh backoff (Docker's rule).
pub const RESET_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Never,
    Always,
    OnFailure,
    UnlessStopped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub when: When,
    /// Restarts allowed (`on-failure:N`, `max_attempts`); `None`: no limit.
    pub max_attempts: Option<u32>,
    /// The first delay; each further restart doubles it, up to `MAX_DELAY`.
    pub delay: Duration,
    /// Attempts only count inside this window (`deploy.restart_policy.window`).
    pub window: Option<Duration>,
    /// Restart a container whose health check turns unhealthy (berth's addition; on by default
    /// for services with a restart policy, off with the label `berth.restart-unhealthy: "false"`).
    pub on_unhealthy: bool,
}

impl Policy {
    /// `deploy.restart_policy` when the file has one (condition `none`, `on-failure`, `any`),
    /// else `restart:`.
    pub fn of(svc: &Service) -> Policy {
        let unhealthy_label = svc
            .labels
            .get("berth.restart-unhealthy")
            .map(|v| !matches!(v.as_str(), "false" | "0" | "no"))
            .unwrap_or(true);
        if let Some(rp) = svc.deploy.as_ref().and_then(|d| d.restart_policy.as_ref()) {
            // Swarm's values (none, on-failure, any) and the `restart:` ones Compose maps to
            // them (no, always, unless-stopped).
            let when = match rp.condition.as_deref() {
                Some("none" | "no") => When::Never,
                Some("on-failure") => When::OnFailure,
                Some("unless-stopped") => When::UnlessStopped,
                _ => When::Always,
            };
            return Policy {
                when,
                max_attempts: rp.max_attempts.filter(|&n| n > 0),
                delay: rp
                    .delay
                    .map(|d| d.as_std())
                    .filter(|d| !d.is_zero())
                    .unwrap_or(BASE_DELAY),
                window: rp.window.map(|d| d.as_std()).filter(|d| !d.is_zero()),
                on_unhealthy: when != When::Never && unhealthy_label,
            };
        }
        let r = svc.restart.as_ref().map(|r| r.0.as_str()).unwrap_or("no");
        let when = match r {
            "always" => When::Always,
            "unless-stopped" => When::UnlessStopped,
            s if s.starts_with("on-failure") => When::OnFailure,
            _ => When::Never,
        };
        Policy {
            when,
            max_attempts: svc.restart.as_ref().and_then(|r| r.max_retries()),
            delay: BASE_DELAY,
            window: None,
            on_unhealthy: when != When::Never && unhealthy_label,
        }
    }

    /// Whether a container that ended in `state` is started again, given the restarts it has
    /// had. A container the user stopped is never restarted (the caller checks that).
    pub fn restarts(&self, state: State, attempts: u32) -> bool {
        let failed = match state {
            State::Exited(0) => false,
            State::Exited(_) | State::OomKilled => true,
            State::Running | State::Created | State::Paused => return false,
        };
        let wanted = match self.when {
            When::Never => false,
            When::Always | When::UnlessStopped => true,
            When::OnFailure => failed,
        };
        wanted && self.max_attempts.is_none_or(|m| attempts < m)
    }

    /// The delay before restart number `attempts + 1`: `delay`, doubled per earlier restart,
    /// capped at `MAX_DELAY`.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let factor = 1u32.checked_shl(attempts.min(20)).unwrap_or(u32::MAX);
        self.delay
            .saturating_mul(factor)
            .min(MAX_DELAY.max(self.delay))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::model::{Deploy, Restart, RestartPolicy};
    use crate::spec::units::Duration as D;

    fn svc(restart: &str) -> Service {
        Service {
            restart: Some(Restart(restart.into())),
            ..Service::default()
        }
    }

    #[test]
    fn compose_restart_values() {
        let p = Policy::of(&svc("on-failure:3"));
        assert_eq!((p.when, p.max_attempts), (When::OnFailure, Some(3)));
        assert!(p.restarts(State::Exited(1), 0));
        assert!(p.restarts(State::Exited(1), 2));
        assert!(
            !p.restarts(State::Exited(1), 3),
            "three restarts, then it stays down"
        );
        assert!(!p.restarts(State::Exited(0), 0));
        assert!(p.restarts(State::OomKilled, 0));
        let a = Policy::of(&svc("always"));
        assert!(a.restarts(State::Exited(0), 100));
        assert!(!Policy::of(&svc("no")).restarts(State::Exited(1), 0));
        assert!(!Policy::of(&Service::default()).restarts(State::Exited(1), 0));
        assert!(Policy::of(&svc("unless-stopped")).restarts(State::Exited(137), 5));
    }

    #[test]
    fn backoff_doubles_up_to_the_ceiling() {
        let p = Policy::of(&svc("always"));
        assert_eq!(p.backoff(0), Duration::from_millis(100));
        assert_eq!(p.backoff(1), Duration::from_millis(200));
        assert_eq!(p.backoff(3), Duration::from_millis(800));
        assert_eq!(p.backoff(30), MAX_DELAY);
    }

    #[test]
    fn deploy_restart_policy_wins() {
        let mut s = svc("always");
        s.deploy = Some(Deploy {
            restart_policy: Some(RestartPolicy {
                condition: Some("on-failure".into()),
                delay: Some(D(2_000_000_000)),
                max_attempts: Some(2),
                window: None,
            }),
            ..Deploy::default()
        });
        let p = Policy::of(&s);
        assert_eq!(p.when, When::OnFailure);
        assert_eq!(p.backoff(0), Duration::from_secs(2));
        assert!(!p.restarts(State::Exited(1), 2));
        s.labels
            .insert("berth.restart-unhealthy".into(), "false".into());
        assert!(!Policy::of(&s).on_unhealthy);
        assert!(Policy::of(&svc("always")).on_unhealthy);
        assert!(!Policy::of(&svc("no")).on_unhealthy);
    }
}
