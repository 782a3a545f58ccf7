//! When to start the replacement of a worker that exited.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// How replacements of dead workers are paced.
///
/// A worker that ran for at least `stable_after` is replaced at once and
/// resets the count of failures. A worker that died sooner counts as a
/// failure: the first is replaced at once, each further consecutive one after
/// `initial_delay`, doubled per failure up to `max_delay`. So a worker program
/// that cannot start never spins a core.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use isotropic_cluster::primary::RestartPolicy;
///
/// let policy = RestartPolicy::default()
///     .initial_delay(Duration::from_millis(50))
///     .max_delay(Duration::from_secs(5));
/// # let _ = policy;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a policy does nothing until given to a builder"]
pub struct RestartPolicy {
    stable_after: Duration,
    initial_delay: Duration,
    max_delay: Duration,
    intensity: Option<Intensity>,
}

/// What a primary does when workers restart more often than its
/// [`RestartPolicy::intensity`] allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnIntensity {
    /// Keep replacing, each replacement after the policy's `max_delay`.
    SlowDown,
    /// Shut the cluster down (a `shutDown`, after the
    /// [`RestartIntensityExceeded`](super::RestartIntensityExceeded) event).
    ShutDown,
}

/// At most `restarts` replacements within `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Intensity {
    restarts: u32,
    period: Duration,
    then: OnIntensity,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            stable_after: Duration::from_secs(1),
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            intensity: None,
        }
    }
}

impl RestartPolicy {
    /// A worker that ran at least this long counts as stable (default 1 s).
    pub fn stable_after(mut self, duration: Duration) -> Self {
        self.stable_after = duration;
        self
    }

    /// The delay after the second consecutive early exit (default 100 ms).
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }

    /// The longest delay (default 10 s).
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Erlang's restart intensity: more than `restarts` replacements within
    /// `period` raise [`RestartIntensityExceeded`](super::RestartIntensityExceeded),
    /// then `then` applies. Default: no limit (backoff alone).
    pub fn intensity(mut self, restarts: u32, period: Duration, then: OnIntensity) -> Self {
        self.intensity = Some(Intensity {
            restarts,
            period,
            then,
        });
        self
    }

    pub(crate) fn max(&self) -> Duration {
        self.max_delay
    }
}

/// The running count of early exits.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    failures: u32,
    /// When recent replacements happened, within the intensity period.
    recent: VecDeque<Instant>,
}

impl Backoff {
    /// Records a replacement; when it is one too many for the policy's
    /// intensity, how many there were in the period, and what to do.
    pub(crate) fn over_intensity(
        &mut self,
        policy: &RestartPolicy,
    ) -> Option<(u32, Duration, OnIntensity)> {
        let intensity = policy.intensity?;
        let now = Instant::now();
        self.recent.push_back(now);
        while self
            .recent
            .front()
            .is_some_and(|at| now.duration_since(*at) > intensity.period)
        {
            self.recent.pop_front();
        }
        let restarts = u32::try_from(self.recent.len()).unwrap_or(u32::MAX);
        (restarts > intensity.restarts).then_some((restarts, intensity.period, intensity.then))
    }

    /// Records an exit of a worker started at `started`; returns how long to
    /// wait before replacing it, and the failure count.
    pub(crate) fn on_exit(&mut self, policy: &RestartPolicy, started: Instant) -> (Duration, u32) {
        if started.elapsed() >= policy.stable_after {
            self.failures = 0;
            return (Duration::ZERO, 0);
        }
        self.on_failure(policy)
    }

    /// Records a failure to start a worker at all.
    pub(crate) fn on_failure(&mut self, policy: &RestartPolicy) -> (Duration, u32) {
        self.failures = self.failures.saturating_add(1);
        let doublings = self.failures.saturating_sub(2).min(30);
        let delay = match self.failures {
            1 => Duration::ZERO,
            _ => policy
                .initial_delay
                .saturating_mul(1 << doublings)
                .min(policy.max_delay),
        };
        (delay, self.failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_exits_back_off_exponentially_up_to_the_cap() {
        let policy = RestartPolicy::default()
            .initial_delay(Duration::from_millis(10))
            .max_delay(Duration::from_millis(50));
        let mut backoff = Backoff::default();
        let delays: Vec<u64> = (0..6)
            .map(|_| backoff.on_exit(&policy, Instant::now()).0.as_millis() as u64)
            .collect();
        assert_eq!(delays, [0, 10, 20, 40, 50, 50]);
    }

    #[test]
    fn intensity_counts_replacements_within_the_period() {
        let policy =
            RestartPolicy::default().intensity(2, Duration::from_secs(60), OnIntensity::ShutDown);
        let mut backoff = Backoff::default();
        let over: Vec<bool> = (0..4)
            .map(|_| backoff.over_intensity(&policy).is_some())
            .collect();
        assert_eq!(over, [false, false, true, true]);
        let unlimited = RestartPolicy::default();
        assert!((0..100).all(|_| backoff.over_intensity(&unlimited).is_none()));
        let short = RestartPolicy::default().intensity(0, Duration::ZERO, OnIntensity::SlowDown);
        assert_eq!(
            Backoff::default().over_intensity(&short),
            Some((1, Duration::ZERO, OnIntensity::SlowDown))
        );
    }

    #[test]
    fn a_stable_run_resets_the_count() {
        let policy = RestartPolicy::default().stable_after(Duration::ZERO);
        let mut backoff = Backoff::default();
        backoff.on_failure(&policy);
        backoff.on_failure(&policy);
        assert_eq!(
            backoff.on_exit(&policy, Instant::now()),
            (Duration::ZERO, 0)
        );
        assert_eq!(backoff.on_failure(&policy), (Duration::ZERO, 1));
    }
}
