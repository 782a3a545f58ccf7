//! What each worker uses, sampled by one timer of the actor for all workers
//! (no thread or task per worker), every
//! [`sample_interval`](super::PrimaryBuilder::sample_interval) (1 s by
//! default): its CPU time and its memory, its cgroup's `memory.current`
//! where it runs in a cgroup with the memory controller, else the resident
//! memory of its whole process tree (`/proc`, read in `sys`). A worker
//! sampled over [`max_memory`](super::PrimaryBuilder::max_memory) raises
//! [`WorkerOverMemory`] once, whose default action recycles it.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use super::context::{PrimaryContext, Timer};
use super::events::WorkerOverMemory;
use super::figures::{MemorySource, ResourceUsage};
use crate::events;
use crate::{WorkerId, sys};

/// One reading of what a worker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) cpu: Duration,
    pub(crate) memory: u64,
    pub(crate) source: MemorySource,
}

impl Usage {
    /// Reads what worker `pid` (our child) uses now, its cgroup's directory
    /// being `cgroup` if it runs in one (then its processes are the
    /// cgroup's, if it is among them); `None` once it is gone.
    pub(crate) fn read(pid: u32, cgroup: Option<&Path>) -> Option<Self> {
        let members = cgroup
            .and_then(sys::cgroup_processes)
            .filter(|members| members.contains(&pid));
        let tree = sys::tree_usage(pid, members.as_deref())?;
        let (memory, source) = match cgroup.and_then(sys::memory_current) {
            Some(current) => (current, MemorySource::Cgroup),
            None => (tree.rss, MemorySource::ProcessTree),
        };
        Some(Self {
            cpu: tree.cpu,
            memory,
            source,
        })
    }
}

/// What is known of one worker's use: the last sample (and the CPU time of
/// the one before, for a recent CPU share), and whether its
/// [`WorkerOverMemory`] was raised (at most once per worker).
#[derive(Debug, Default)]
pub(super) struct Resources {
    last: Option<(Instant, Usage)>,
    previous: Option<(Instant, Duration)>,
    over_memory: bool,
}

impl Resources {
    /// The last sample, with its age.
    pub(super) fn usage(&self) -> Option<ResourceUsage> {
        let (at, usage) = self.last?;
        let (recent_cpu_time, recent_interval) = self
            .previous
            .map_or((Duration::ZERO, Duration::ZERO), |(before, cpu)| {
                (usage.cpu.saturating_sub(cpu), at - before)
            });
        Some(ResourceUsage {
            cpu_time: usage.cpu,
            memory: usage.memory,
            memory_source: usage.source,
            age: at.elapsed(),
            recent_cpu_time,
            recent_interval,
        })
    }

    /// Records `usage`, sampled now.
    fn record(&mut self, usage: Usage) {
        self.previous = self.last.map(|(at, last)| (at, last.cpu));
        self.last = Some((Instant::now(), usage));
    }
}

/// Whether the sampling timer is set.
#[derive(Debug, Default)]
pub(super) struct Sampler {
    armed: bool,
}

impl PrimaryContext {
    /// Sets the sampling timer, unless sampling is off or it is set already
    /// (after a fork: a primary without workers samples nothing).
    pub(super) fn arm_sampler(&mut self) {
        if let Some(interval) = self.config.sample_interval
            && !std::mem::replace(&mut self.sampler.armed, true)
        {
            self.timers.insert(Timer::Sample, interval);
        }
    }

    /// Samples every live worker, raises [`WorkerOverMemory`] for those over
    /// the limit, and sets the timer again while workers are left.
    pub(super) fn sample(&mut self) {
        self.sampler.armed = false;
        let mut over = Vec::new();
        let ids: Vec<WorkerId> = self.registry.pids().map(|(id, _)| id).collect();
        for id in ids {
            // (A replacement over it before it joined the pool is raised
            // once it has.)
            let recyclable = self.recyclable(id);
            let Some(entry) = self.registry.get_mut(id) else {
                continue;
            };
            let cgroup = entry.cgroup.as_deref();
            let Some(usage) = self.spawner.usage(entry.worker.pid(), cgroup) else {
                continue;
            };
            entry.resources.record(usage);
            self.metrics.pool.sampled(id, usage);
            if let Some(limit) = self.config.max_memory
                && usage.memory > limit
                && recyclable
                && !std::mem::replace(&mut entry.resources.over_memory, true)
            {
                over.push((entry.worker.clone(), usage.memory, limit));
            }
        }
        for (worker, memory, limit) in over {
            events::publish(
                self,
                WorkerOverMemory {
                    worker,
                    memory,
                    limit,
                },
            );
        }
        if self.registry.len() > 0 {
            self.arm_sampler();
        }
    }

    pub(super) fn complete_over_memory(&mut self, event: &WorkerOverMemory) {
        tracing::warn!(
            worker_id = %event.worker.id(),
            memory = event.memory,
            limit = event.limit,
            "Worker over its memory limit: recycling it (its replacement first)"
        );
        let _ = self.recycle_worker(event.worker.id());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(millis: u64) -> Usage {
        Usage {
            cpu: Duration::from_millis(millis),
            memory: 1,
            source: MemorySource::ProcessTree,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_recent_cpu_time_is_the_difference_between_the_last_two_samples() {
        let mut resources = Resources::default();
        assert_eq!(resources.usage(), None);
        resources.record(cpu(100));
        let first = resources.usage().expect("sampled");
        assert_eq!(
            (first.recent_cpu_time, first.recent_interval),
            (Duration::ZERO, Duration::ZERO)
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        resources.record(cpu(600));
        tokio::time::advance(Duration::from_secs(1)).await;
        resources.record(cpu(700));
        let usage = resources.usage().expect("sampled");
        assert_eq!(usage.cpu_time, Duration::from_millis(700));
        assert_eq!(
            (usage.recent_cpu_time, usage.recent_interval),
            (Duration::from_millis(100), Duration::from_secs(1))
        );
    }
}
