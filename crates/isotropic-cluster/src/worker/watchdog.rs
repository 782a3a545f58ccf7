//! The application watchdog: a worker's own word that its work advances,
//! on which its answers to the primary's heartbeats depend.
//!
//! The worker's event loop answers each heartbeat of a primary that watches
//! it ([`PrimaryBuilder::watchdog`](crate::primary::PrimaryBuilder::watchdog)):
//! a blocked loop misses them. A loop that runs while the work it serves is
//! stuck (a job loop that stopped advancing) would still answer; a
//! [`Watchdog`] closes that gap.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::ClusterWorker;

/// Some work of this worker that says it advances, with
/// [`progress`](Self::progress); made by [`ClusterWorker::watchdog`].
///
/// While a `Watchdog` (any clone of it) lives, the worker answers the
/// primary's heartbeats only if its last progress (or its creation) is at
/// most `within` old; with several watchdogs, only if each of them is. So
/// once the work stops calling `progress`, the answers stop `within` later,
/// and a primary watching with `watchdog(d)` raises `WorkerUnresponsive`
/// after `d` more of silence (it looks every `d / 4`): at most
/// `within + d + d / 4` after the last progress. Dropping the last clone
/// ends the watchdog's say (a job loop that finished). Without a primary
/// that watches, nothing asks, and `progress` costs a clock read and an
/// uncontended lock.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use isotropic_cluster::worker::ClusterWorker;
///
/// # async fn next_job() -> Option<u64> { None }
/// # async fn run(_job: u64) {}
/// # async fn demo() -> Result<(), isotropic_cluster::Error> {
/// let worker = ClusterWorker::builder().start().await?;
/// // Each job takes at most 10 s: a loop without progress for 30 s is stuck.
/// let watchdog = worker.watchdog(Duration::from_secs(30));
/// tokio::spawn(async move {
///     while let Some(job) = next_job().await {
///         run(job).await;
///         watchdog.progress();
///     }
///     // The loop is done: the watchdog is dropped, and with it its say.
/// });
/// worker.closed().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Watchdog {
    progress: Arc<Progress>,
}

/// One watchdog's interval and last progress.
#[derive(Debug)]
struct Progress {
    within: Duration,
    last: Mutex<Instant>,
}

impl Watchdog {
    /// Says that the work advances: the worker answers heartbeats for
    /// `within` from now (as far as this watchdog is concerned).
    pub fn progress(&self) {
        *self.progress.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }
}

/// A worker's live watchdogs, held weakly: a dropped one has no say.
#[derive(Debug, Default)]
pub(super) struct Watchdogs(Mutex<Vec<Weak<Progress>>>);

impl Watchdogs {
    /// A new watchdog, which counts as having seen progress now.
    fn add(&self, within: Duration) -> Watchdog {
        let progress = Arc::new(Progress {
            within,
            last: Mutex::new(Instant::now()),
        });
        let mut live = self.0.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|weak| weak.strong_count() > 0);
        live.push(Arc::downgrade(&progress));
        Watchdog { progress }
    }

    /// Whether each live watchdog saw progress within its interval before
    /// `now` (true when there is none): whether to answer a heartbeat.
    pub(super) fn fresh(&self, now: Instant) -> bool {
        let mut live = self.0.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|weak| weak.strong_count() > 0);
        live.iter().filter_map(Weak::upgrade).all(|progress| {
            let last = *progress.last.lock().unwrap_or_else(|e| e.into_inner());
            now.saturating_duration_since(last) <= progress.within
        })
    }
}

impl ClusterWorker {
    /// An application watchdog: from now on, the worker answers the
    /// primary's heartbeats only while the returned [`Watchdog`] (and every
    /// other live one) saw [`progress`](Watchdog::progress) within `within`.
    /// See [`Watchdog`] for the exact rule and an example.
    pub fn watchdog(&self, within: Duration) -> Watchdog {
        self.watchdogs.add(within)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WITHIN: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn without_watchdogs_heartbeats_are_answered() {
        assert!(Watchdogs::default().fresh(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_watchdog_is_fresh_for_its_interval_after_each_progress() {
        let watchdogs = Watchdogs::default();
        let watchdog = watchdogs.add(WITHIN);
        let start = Instant::now();
        assert!(watchdogs.fresh(start + WITHIN));
        assert!(!watchdogs.fresh(start + WITHIN + Duration::from_millis(1)));
        tokio::time::advance(WITHIN * 2).await;
        assert!(!watchdogs.fresh(Instant::now()));
        watchdog.clone().progress();
        assert!(watchdogs.fresh(Instant::now() + WITHIN));
    }

    #[tokio::test(start_paused = true)]
    async fn every_live_watchdog_must_be_fresh_and_a_dropped_one_has_no_say() {
        let watchdogs = Watchdogs::default();
        let slow = watchdogs.add(WITHIN);
        let fast = watchdogs.add(WITHIN / 10);
        tokio::time::advance(WITHIN / 2).await;
        slow.progress();
        assert!(!watchdogs.fresh(Instant::now()), "the fast one is stale");
        let copy = fast.clone();
        drop(fast);
        assert!(!watchdogs.fresh(Instant::now()), "a clone keeps it alive");
        drop(copy);
        assert!(watchdogs.fresh(Instant::now()));
        drop(slow);
        assert!(
            watchdogs
                .0
                .lock()
                .expect("lock")
                .iter()
                .all(|w| w.strong_count() == 0)
        );
    }
}
