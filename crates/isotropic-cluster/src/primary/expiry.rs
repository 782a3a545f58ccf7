//! Recycling by use and age (`max_requests`, `max_age`, each with jitter,
//! so that workers started together do not all expire together).

use std::hash::{BuildHasher as _, RandomState};
use std::time::Duration;

use super::config::Config;
use super::context::{PrimaryContext, Timer};
use super::events::{Expiry, WorkerExpired};
use crate::WorkerId;
use crate::events;

/// How many requests worker may serve: `max` plus a random share of
/// `jitter` (0 to `jitter`, uniformly).
pub(super) fn request_limit(max: u64, jitter: u64) -> u64 {
    max.saturating_add(random_up_to(jitter))
}

/// How long a worker may live: `max` plus up to a tenth of it.
pub(super) fn age_limit(max: Duration) -> Duration {
    let tenth = u64::try_from(max.as_millis() / 10).unwrap_or(u64::MAX);
    max.saturating_add(Duration::from_millis(random_up_to(tenth)))
}

/// A number from 0 to `max`, from the standard library's random hasher
/// keys (no dependency for this little randomness).
fn random_up_to(max: u64) -> u64 {
    let random = RandomState::new().hash_one(std::time::SystemTime::now());
    max.checked_add(1).map_or(random, |span| random % span)
}

impl PrimaryContext {
    /// Gives a new worker its limits, by the settings.
    pub(super) fn arm_expiry(&mut self, id: WorkerId, config: &Config) {
        if let Some(max) = config.max_age {
            self.timers.insert(Timer::Expire(id), age_limit(max));
        }
        if let (Some(max), Some(entry)) = (config.max_requests, self.registry.get_mut(id)) {
            entry.request_limit = Some(request_limit(max, config.max_requests_jitter));
        }
    }

    /// Worker `id` served `count` more requests: past its limit, it expires.
    pub(super) fn served(&mut self, id: WorkerId, count: u64) {
        let Some(entry) = self.registry.get_mut(id) else {
            return;
        };
        entry.served = entry.served.saturating_add(count);
        let (served, limit) = (entry.served, entry.request_limit);
        if let Some(limit) = limit.filter(|limit| served >= *limit) {
            self.expire(id, Expiry::Requests { served, limit });
        }
    }

    /// Worker `id` reached its maximum age.
    pub(super) fn expire_by_age(&mut self, id: WorkerId) {
        if let Some(limit) = self.config.max_age {
            self.expire(id, Expiry::Age { limit });
        }
    }

    /// Publishes `workerExpired` once, for a worker that may be recycled.
    fn expire(&mut self, id: WorkerId, reason: Expiry) {
        if !self.recyclable(id) {
            return;
        }
        let Some(entry) = self.registry.get_mut(id) else {
            return;
        };
        if std::mem::replace(&mut entry.expired, true) {
            return;
        }
        let worker = entry.worker.clone();
        events::publish(self, WorkerExpired { worker, reason });
    }

    pub(super) fn complete_expired(&mut self, event: &WorkerExpired) {
        let id = event.worker.id();
        tracing::info!(worker_id = %id, reason = ?event.reason, "Worker expired: recycling it");
        let _ = self.recycle_worker(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_spread_within_their_jitter() {
        let limits: std::collections::BTreeSet<u64> =
            (0..200).map(|_| request_limit(1000, 50)).collect();
        assert!(limits.iter().all(|limit| (1000..=1050).contains(limit)));
        assert!(limits.len() > 10, "spread: {limits:?}");
        assert_eq!(request_limit(1000, 0), 1000);
        assert_eq!(request_limit(u64::MAX, 5), u64::MAX);
        for _ in 0..50 {
            let age = age_limit(Duration::from_secs(100));
            assert!((Duration::from_secs(100)..=Duration::from_secs(110)).contains(&age));
        }
    }
}
