//! When to start the replacement of a worker that exited.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::Signal;

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
    restart: Restart,
    /// Exit codes that count as normal for [`Restart::OnFailure`], a bit
    /// per code 0–255.
    normal_codes: [u64; 4],
}

/// Which exits are followed by a replacement, as Erlang/OTP's restart types
/// (CLI `--restart`). A worker the primary itself stopped to recycle it
/// (`stop_worker`, a rolling restart) is always replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Restart {
    /// Every exit (OTP's *permanent*; the original's behaviour).
    #[default]
    Always,
    /// Only an abnormal exit (OTP's *transient*): an exit code that is not
    /// one of [`RestartPolicy::normal_exit_codes`] (default: 0), or death by
    /// a signal other than SIGTERM, SIGINT, SIGHUP or SIGPIPE (systemd's
    /// clean signals).
    OnFailure,
    /// No exit (OTP's *temporary*): the pool shrinks.
    Never,
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
            restart: Restart::Always,
            normal_codes: [1, 0, 0, 0],
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

    /// Which exits are followed by a replacement (default
    /// [`Restart::Always`]).
    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    /// The exit codes that count as normal for [`Restart::OnFailure`]
    /// (default: only 0).
    ///
    /// ```
    /// use isotropic_cluster::primary::{Restart, RestartPolicy};
    ///
    /// // A job worker exits 0 when done, 3 when there is nothing to do.
    /// let policy = RestartPolicy::default()
    ///     .restart(Restart::OnFailure)
    ///     .normal_exit_codes([0, 3]);
    /// # let _ = policy;
    /// ```
    pub fn normal_exit_codes(mut self, codes: impl IntoIterator<Item = u8>) -> Self {
        self.normal_codes = [0; 4];
        for code in codes {
            self.normal_codes[usize::from(code / 64)] |= 1 << (code % 64);
        }
        self
    }

    /// Whether an exit with `code` or by `signal` is followed by a
    /// replacement.
    pub fn replaces(&self, code: Option<i32>, signal: Option<Signal>) -> bool {
        match self.restart {
            Restart::Always => true,
            Restart::OnFailure => !self.is_normal(code, signal),
            Restart::Never => false,
        }
    }

    /// Whether a worker the primary stopped for a failure (unresponsive) is
    /// replaced, whatever its exit status: unless [`Restart::Never`].
    pub(crate) fn replaces_failures(&self) -> bool {
        self.restart != Restart::Never
    }

    /// Whether an exit with `code` or by `signal` is normal: a code of
    /// [`normal_exit_codes`](Self::normal_exit_codes), or one of the clean
    /// signals (SIGTERM, SIGINT, SIGHUP, SIGPIPE).
    pub fn is_normal(&self, code: Option<i32>, signal: Option<Signal>) -> bool {
        match (code, signal) {
            (Some(code), _) => u8::try_from(code).is_ok_and(|code| {
                self.normal_codes[usize::from(code / 64)] & (1 << (code % 64)) != 0
            }),
            (None, Some(signal)) => {
                matches!(
                    signal,
                    Signal::TERM | Signal::INT | Signal::HUP | Signal::PIPE
                )
            }
            (None, None) => false,
        }
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

/// The delayed replacements still to start: the slot of each, and the
/// timer that starts it (a cancelled one finds nothing to start).
#[derive(Debug, Default)]
pub(crate) struct Owed {
    entries: Vec<(u32, u64)>,
    next: u64,
}

impl Owed {
    /// A replacement in `slot` is owed; the token of its timer.
    pub(crate) fn push(&mut self, slot: u32) -> u64 {
        self.next += 1;
        self.entries.push((slot, self.next));
        self.next
    }

    /// The timer `token` fired: its slot, if its replacement is still owed.
    pub(crate) fn take(&mut self, token: u64) -> Option<u32> {
        let at = self.entries.iter().position(|entry| entry.1 == token)?;
        Some(self.entries.swap_remove(at).0)
    }

    /// Cancels up to `count` of them, the highest slots first; how many.
    pub(crate) fn cancel(&mut self, count: usize) -> usize {
        let cancelled = count.min(self.entries.len());
        self.entries.sort_unstable();
        self.entries.truncate(self.entries.len() - cancelled);
        cancelled
    }

    /// Cancels those of slots `from` and above (a rollout's pool shrank).
    pub(crate) fn cancel_from(&mut self, from: u32) {
        self.entries.retain(|entry| entry.0 < from);
    }

    pub(crate) fn slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.entries.iter().map(|entry| entry.0)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
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
    fn each_restart_mode_replaces_the_exits_it_names() {
        let on_failure = RestartPolicy::default()
            .restart(Restart::OnFailure)
            .normal_exit_codes([0, 3]);
        let exits = [
            (Some(0), None),
            (Some(3), None),
            (Some(1), None),
            (Some(255), None),
            (None, Some(Signal::TERM)),
            (None, Some(Signal::KILL)),
            (None, None),
        ];
        let replaced = |policy: RestartPolicy| -> Vec<bool> {
            exits
                .iter()
                .map(|(code, signal)| policy.replaces(*code, *signal))
                .collect()
        };
        assert_eq!(replaced(RestartPolicy::default()), [true; 7]);
        assert_eq!(
            replaced(on_failure),
            [false, false, true, true, false, true, true]
        );
        let never = RestartPolicy::default().restart(Restart::Never);
        assert_eq!(replaced(never), [false; 7]);
        let only_zero = RestartPolicy::default().restart(Restart::OnFailure);
        assert!(only_zero.replaces(Some(3), None));
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

    #[test]
    fn a_cancelled_replacement_is_not_started_by_its_timer_even_if_its_slot_is_owed_again() {
        let mut owed = Owed::default();
        let first = owed.push(3);
        let low = owed.push(1);
        assert_eq!(owed.cancel(1), 1, "the highest slot first");
        let again = owed.push(3);
        assert_eq!(
            owed.take(first),
            None,
            "cancelled: its timer starts nothing"
        );
        assert_eq!(owed.take(low), Some(1));
        assert_eq!(owed.slots().collect::<Vec<_>>(), [3]);
        assert_eq!(owed.take(again), Some(3));
        assert_eq!(owed.slots().count(), 0);
    }
}
