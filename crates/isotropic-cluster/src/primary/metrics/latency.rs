//! [`Latency`]: a histogram of durations in fixed buckets, recorded with
//! relaxed atomic adds (no lock: every request's reply records one).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The buckets' upper bounds, in seconds: 100 µs to 10 s (a request within
/// one machine takes tens of microseconds; a slow handler, seconds).
pub(crate) const BOUNDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Durations counted by bucket (the last one above every bound), and their
/// sum in nanoseconds.
#[derive(Debug, Default)]
pub(crate) struct Latency {
    counts: [AtomicU64; BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

/// What a [`Latency`] holds at one moment.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Snapshot {
    /// The sum of the durations, in seconds.
    pub(crate) sum: f64,
    pub(crate) count: u64,
    /// Each bucket's upper bound (the last: infinity) and its own count
    /// (not cumulative).
    pub(crate) buckets: Vec<(f64, u64)>,
}

impl Latency {
    /// Counts one duration.
    pub(crate) fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = BOUNDS.partition_point(|bound| *bound < seconds);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        let bounds = BOUNDS.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = (bounds.zip(&self.counts))
            .map(|(bound, count)| (bound, count.load(Ordering::Relaxed)))
            .collect();
        Snapshot {
            sum: Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed)).as_secs_f64(),
            count: buckets.iter().map(|(_, count)| count).sum(),
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_duration_lands_in_the_first_bucket_that_holds_it() {
        let latency = Latency::default();
        for micros in [50, 100, 101, 3_000, 20_000_000] {
            latency.observe(Duration::from_micros(micros));
        }
        let snapshot = latency.snapshot();
        assert_eq!(snapshot.count, 5);
        let count = |bound: f64| {
            let bucket = snapshot.buckets.iter().find(|(b, _)| *b == bound);
            bucket.expect("a bucket").1
        };
        // (A bound holds durations up to and including it.)
        assert_eq!(count(0.0001), 2);
        assert_eq!(count(0.00025), 1);
        assert_eq!(count(0.005), 1);
        assert_eq!(count(f64::INFINITY), 1);
        assert!((snapshot.sum - 20.003_251).abs() < 1e-9, "{}", snapshot.sum);
    }
}
